#!/usr/bin/env python3
"""Run each family's MoE block from transformers in the checkpoint's own dtype (bf16), as a bf16 model runs it.

Usage: python3 test/parity/transformers_half.py IN_DIR OUT_DIR [--device cpu|cuda]

IN_DIR is written by `half.ts prepare`: one checkpoint per case (IN_DIR/<case>/) with the real models' gate shapes,
and IN_DIR/inputs.safetensors with one BF16 hidden-state matrix [T, d] per case. The block is built from the
checkpoint's config.json in fp32, filled from our safetensors (as transformers_parity.py does), then cast to the
checkpoint dtype the way from_pretrained(dtype=...) leaves it (DeepSeek-V3's e_score_correction_bias stays fp32:
_keep_in_fp32_modules_strict). We call the block's own gate module for its (logits, weights, ids) and the block for
its output, and write OUT_DIR/transformers-half-<case>.safetensors (a file per case: each stays small enough to
travel back from another machine) with:
  <case>.ids [T, k] I32, <case>.weights [T, k], <case>.logits [T, E] (the gate's values), <case>.output [T, d],
  and for Qwen2-MoE <case>.shared_gate [T, 1] (sigmoid(shared_expert_gate(x)), the shared expert's scale), each in
  the dtype the block produced it in
plus OUT_DIR/transformers-half-info.json (versions, device, dtypes the gate produced).
"""

import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from transformers_parity import BLOCKS, build_block  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    device = "cuda" if "--device=cuda" in sys.argv or ("--device" in sys.argv and "cuda" in sys.argv) else "cpu"
    in_dir, out_dir = args[0], args[1]
    torch.manual_seed(0)
    os.makedirs(out_dir, exist_ok=True)
    inputs = load_file(os.path.join(in_dir, "inputs.safetensors"))
    info = {"torch": torch.__version__, "transformers": transformers.__version__, "device": device, "cases": {}}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    for name in sorted(os.listdir(in_dir)):
        d = os.path.join(in_dir, name)
        if not os.path.isfile(os.path.join(d, "config.json")):
            continue
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        family, mod_name, cls_name, sub = BLOCKS[cfg["model_type"]]
        dtype = DTYPES[cfg.get("torch_dtype") or cfg.get("dtype")]
        mod = __import__(mod_name, fromlist=[cls_name])
        block, _, _ = build_block(d, mod, getattr(mod, cls_name), family, sub)
        bias = block.gate.e_score_correction_bias.detach().clone() if family == "deepseek-v3" else None
        block = block.to(device=device, dtype=dtype)
        if bias is not None:  # the fp32 values, not the bf16 ones .to() left (a widened bf16 bias picks other experts)
            block.gate.e_score_correction_bias.data = bias.to(device)
        x = inputs[name].to(device=device, dtype=dtype)
        with torch.no_grad():
            logits, weights, ids = block.gate(x)
            y = block(x.unsqueeze(0))
        if isinstance(y, tuple):
            y = y[0]
        out = {}
        out[f"{name}.ids"] = ids.to(torch.int32).cpu().contiguous()
        # each in the dtype the block produced it in (lossless, and half the bytes of widening bf16 to fp32)
        out[f"{name}.weights"] = weights.cpu().contiguous()
        out[f"{name}.logits"] = logits.cpu().contiguous()
        out[f"{name}.output"] = y.reshape(x.shape).cpu().contiguous()
        if hasattr(block, "shared_expert_gate"):
            with torch.no_grad():  # as Qwen2MoeSparseMoeBlock.forward scales its shared expert
                out[f"{name}.shared_gate"] = torch.nn.functional.sigmoid(block.shared_expert_gate(x)).cpu().contiguous()
        info["cases"][name] = {
            "class": f"{mod_name}.{cls_name}",
            "model_dtype": str(dtype),
            "gate_logits_dtype": str(logits.dtype),
            "gate_weights_dtype": str(weights.dtype),
            "output_dtype": str(y.dtype),
            "tokens": x.shape[0],
        }
        if f"{name}.shared_gate" in out:
            info["cases"][name]["shared_gate_dtype"] = str(out[f"{name}.shared_gate"].dtype)
        save_file(out, os.path.join(out_dir, f"transformers-half-{name}.safetensors"))
        print(name, info["cases"][name], flush=True)
    with open(os.path.join(out_dir, "transformers-half-info.json"), "w") as f:
        json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
