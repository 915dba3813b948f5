"""Reads float32 bit patterns (hex, one per line) on stdin and prints, per value, the bf16 bits of
float32_to_bf16_bits, the fp16 bits numpy rounds to, and the float32 bits of those bf16 bits widened again, for the
vitest beside the router's data path to compare with the TypeScript codec (packages/protocol/src/tensor.ts)."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from switchyard_client import bf16_bits_to_float32, float32_to_bf16_bits, from_tensor, to_tensor  # noqa: E402

u = np.array([int(line, 16) for line in sys.stdin.read().split()], dtype="<u4")
f = u.view("<f4")
bf = float32_to_bf16_bits(f)
via_tensor = from_tensor(to_tensor(f, "bf16"), bf16_bits=True)
f16 = to_tensor(f, "fp16")
print(json.dumps({
    "bf16": [int(b) for b in bf],
    "bf16_via_tensor": [int(b) for b in via_tensor],
    "f16": [int(b) for b in np.frombuffer(f16.data, dtype="<u2")],
    "widened": [int(x) for x in bf16_bits_to_float32(bf).view("<u4")],
}))
