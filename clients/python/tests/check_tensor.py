"""Reads float32 bit patterns (hex, one per line) on stdin and prints, per value, the bf16 bits of
float32_to_bf16_bits, the fp16 bits numpy rounds to, and the float32 bits of those bf16 bits widened again, for the
vitest beside the router's data path to compare with the TypeScript codec (packages/protocol/src/tensor.ts).
Before it prints, it asserts what needs no router: bf16 bit patterns taken as they are whatever their 16-bit integer
type and byte order, answers an engine can write into, int32 (expert_ids) never cast, and unreadable tensors named
in the error."""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from switchyard.v1 import tensor_pb2  # noqa: E402
from switchyard_client import (  # noqa: E402
    bf16_bits_to_float32,
    float32_to_bf16_bits,
    forward_request,
    from_tensor,
    to_tensor,
)

u = np.array([int(line, 16) for line in sys.stdin.read().split()], dtype="<u4")
f = u.view("<f4")
bf = float32_to_bf16_bits(f)
via_tensor = from_tensor(to_tensor(f, "bf16"), bf16_bits=True)
f16 = to_tensor(f, "fp16")

# bf16 bit patterns as torch hands them over: t.view(torch.int16).numpy() is int16, and a big-endian uint16 array is
# the same bits too; none of them may be taken for numbers and rounded again (silently wrong hidden states)
bits = float32_to_bf16_bits(np.array([[1.0, -2.5, 3.140625], [0.0, -0.0, 65280.0]], np.float32))
for name, given in (("uint16", bits), ("int16", bits.view(np.int16)), (">u2", bits.astype(">u2")),
                    (">i2", bits.view(np.int16).astype(">i2")), ("uint16, non-contiguous", np.asfortranarray(bits)),
                    ("int16 column", bits.view(np.int16)[:, ::2])):
    want = bits if name != "int16 column" else bits[:, ::2]
    got = to_tensor(given, "bf16")
    assert got.data == want.astype("<u2").tobytes() and list(got.shape) == list(want.shape), \
        f"bf16 bits given as {name} were changed: {np.frombuffer(got.data, '<u2')} != {want.ravel()}"

# an answer is an array the engine may write into (y += residual), whatever its dtype: not a read-only view
for dtype in ("fp32", "fp16", "int32"):
    a = from_tensor(to_tensor(np.arange(6, dtype=np.float32 if dtype != "int32" else np.int64).reshape(2, 3), dtype))
    assert a.flags.writeable, f"from_tensor of {dtype} is read-only"
    a += 1
assert from_tensor(to_tensor(np.ones((2, 3), np.float32), "bf16"), bf16_bits=True).flags.writeable

# int32 (an assignment's expert_ids) is never cast: int64 2**32 + 3 is not expert 3, -0.5 is not expert 0. Values of
# any integer type in int32's range go as they are; anything else is refused naming the argument
for given in (np.array([[0, 3], [-1, 2**31 - 1]], np.int64), np.array([[0, 3], [-1, 2**31 - 1]], ">i8"),
              np.array([[0, 3]], np.uint8), [[-2**31, 5]], np.array([[1, 2]], np.int32)[:, ::-1]):
    want = np.asarray(given).astype(np.int64)
    assert np.array_equal(from_tensor(to_tensor(given, "int32")), want), f"int32 of {given!r} changed"
for given, why in ((np.array([[2**32 + 3]], np.int64), "4294967299"), (np.array([[-2**31 - 1]], np.int64), "range"),
                   (np.array([[2**63]], np.uint64), "range"), (np.array([[-0.5, 1.0]]), "float64"),
                   (np.array([[3.0]], np.float32), "float32"), ([[True]], "bool"), ([["a"]], "<U1")):
    try:
        forward_request("p", 0, np.zeros((1, 4), np.float32), expert_ids=given, weights=np.ones((1, 1), np.float32))
        raise AssertionError(f"expert_ids {given!r} were sent")
    except ValueError as e:
        assert str(e).startswith("expert_ids: ") and why in str(e), str(e)

# a tensor whose bytes do not match its shape: the error says which tensor, its shape and the bytes
for data in (bytes(4), bytes(5), bytes(28)):
    try:
        from_tensor(tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[2, 3], data=data), name="hidden")
        raise AssertionError(f"a [2, 3] float32 tensor of {len(data)} bytes was read")
    except ValueError as e:
        assert str(e).startswith("hidden: ") and "[2, 3]" in str(e) and f"{len(data)} bytes" in str(e), str(e)

print(json.dumps({
    "bf16": [int(b) for b in bf],
    "bf16_via_tensor": [int(b) for b in via_tensor],
    "f16": [int(b) for b in np.frombuffer(f16.data, dtype="<u2")],
    "widened": [int(x) for x in bf16_bits_to_float32(bf).view("<u4")],
}))
