#!/usr/bin/env python3
"""Run each family's MoE block from Hugging Face transformers on our generated checkpoints.

Usage: python3 test/parity/transformers_parity.py IN_DIR OUT_DIR

IN_DIR holds one checkpoint per family (IN_DIR/<family>/config.json + safetensors, written by our generator) and
IN_DIR/inputs.safetensors with one fp32 hidden-state matrix [T, d] per family (key = family). For each family we build
the transformers block (MixtralSparseMoeBlock, Qwen2MoeSparseMoeBlock, Qwen3MoeSparseMoeBlock, DeepseekV3MoE) from the
checkpoint's config.json, load layer 0's weights from our safetensors into it (strict: every parameter and buffer
must be filled), run it in fp32 on the CPU and write OUT_DIR/transformers-outputs.safetensors (key = family) and
OUT_DIR/transformers-info.json (versions, weight layout found, notable source details).

Weights on disk use the Hugging Face per-expert key names. transformers 5.x keeps experts fused
(experts.gate_up_proj [E, 2F, D] = cat(gate, up), experts.down_proj [E, D, F]); 4.x keeps one module per expert.
We fill whichever layout the installed version has.
"""

import inspect
import json
import os
import re
import sys
import traceback

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

# model_type -> (family, module, block class, key prefix under model.layers.{l})
BLOCKS = {
    "mixtral": ("mixtral", "transformers.models.mixtral.modeling_mixtral", "MixtralSparseMoeBlock", "block_sparse_moe"),
    "qwen2_moe": ("qwen2-moe", "transformers.models.qwen2_moe.modeling_qwen2_moe", "Qwen2MoeSparseMoeBlock", "mlp"),
    "qwen3_moe": ("qwen3-moe", "transformers.models.qwen3_moe.modeling_qwen3_moe", "Qwen3MoeSparseMoeBlock", "mlp"),
    "deepseek_v3": ("deepseek-v3", "transformers.models.deepseek_v3.modeling_deepseek_v3", "DeepseekV3MoE", "mlp"),
}


def load_checkpoint(d):
    tensors = {}
    for name in sorted(os.listdir(d)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(d, name)))
    return tensors


def expert_proj_names(family):
    return ("w1", "w3", "w2") if family == "mixtral" else ("gate_proj", "up_proj", "down_proj")


def fill_block(block, family, ckpt, prefix, num_experts):
    """Map HF checkpoint keys (prefix stripped) onto the block's state dict, whatever its expert layout."""
    sd = block.state_dict()
    g, u, dn = expert_proj_names(family)
    src = {k[len(prefix) + 1 :]: v.float() for k, v in ckpt.items() if k.startswith(prefix + ".")}
    new = {}
    layout = "per-expert modules"
    if "experts.gate_up_proj" in sd:
        layout = "fused 3-D experts (gate_up_proj, down_proj)"
        gate = torch.stack([src.pop(f"experts.{e}.{g}.weight") for e in range(num_experts)])  # [E, F, D]
        up = torch.stack([src.pop(f"experts.{e}.{u}.weight") for e in range(num_experts)])
        down = torch.stack([src.pop(f"experts.{e}.{dn}.weight") for e in range(num_experts)])  # [E, D, F]
        gu = torch.cat([gate, up], dim=1)  # [E, 2F, D]
        want = sd["experts.gate_up_proj"].shape
        if tuple(want) != tuple(gu.shape):
            gu = gu.transpose(1, 2).contiguous()  # some versions store [E, D, 2F]
            down = down.transpose(1, 2).contiguous()
            layout += " (transposed)"
        new["experts.gate_up_proj"] = gu
        new["experts.down_proj"] = down
    for k, v in src.items():
        if family == "mixtral" and k.startswith("experts."):
            # 4.x Mixtral: experts.{i}.w1.weight lives under the same name
            pass
        new[k] = v
    missing = set(sd) - set(new)
    unexpected = set(new) - set(sd)
    if missing or unexpected:
        raise SystemExit(f"{family}: cannot map weights: missing in checkpoint {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
    for k in sd:
        if tuple(sd[k].shape) != tuple(new[k].shape):
            raise SystemExit(f"{family}: {k}: module wants {tuple(sd[k].shape)}, checkpoint gives {tuple(new[k].shape)}")
    block.load_state_dict(new, strict=True)
    return layout


def build_block(d, mod, cls, family, sub):
    """The family's block built from the checkpoint dir d's config.json in fp32 (eager experts), filled from its
    safetensors; returns (block, config, weight layout found)."""
    config = AutoConfig.from_pretrained(d)
    for attr in ("_experts_implementation", "experts_implementation"):
        try:
            setattr(config, attr, "eager")
        except Exception:
            pass
    block = cls(config).float().eval()
    n_exp = {"mixtral": "num_local_experts", "deepseek-v3": "n_routed_experts"}.get(family, "num_experts")
    layout = fill_block(block, family, load_checkpoint(d), f"model.layers.0.{sub}", getattr(config, n_exp))
    return block, config, layout


def main():
    in_dir, out_dir = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    torch.set_num_threads(4)
    os.makedirs(out_dir, exist_ok=True)
    inputs = load_file(os.path.join(in_dir, "inputs.safetensors"))
    outputs = {}
    info = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": "cpu",
        "dtype": "float32",
        "families": {},
    }
    for name in sorted(os.listdir(in_dir)):
        d = os.path.join(in_dir, name)
        if not os.path.isfile(os.path.join(d, "config.json")):
            continue
        with open(os.path.join(d, "config.json")) as f:
            model_type = json.load(f)["model_type"]
        family, mod_name, cls_name, sub = BLOCKS[model_type]
        try:
            mod = __import__(mod_name, fromlist=[cls_name])
            cls = getattr(mod, cls_name)
            block, _, layout = build_block(d, mod, cls, family, sub)
            x = inputs[name].float()
            with torch.no_grad():
                y = block(x.unsqueeze(0))
            if isinstance(y, tuple):
                y = y[0]
            outputs[name] = y.reshape(x.shape).contiguous()
            fam = {"class": f"{mod_name}.{cls_name}", "weight_layout": layout, "tokens": x.shape[0], "hidden": x.shape[1]}
            src = inspect.getsource(mod)
            if family == "deepseek-v3":
                m = re.search(r"masked_fill\(~score_mask\.bool\(\), (.+?)\)\n", src)
                fam["group_mask_fill"] = m.group(1) if m else "unknown"
            info["families"][name] = fam
            print(name, cls_name, layout, "out", tuple(y.shape), "rms", float(y.pow(2).mean().sqrt()), flush=True)
        except BaseException as e:  # keep going: one family's failure must not hide the others' results
            traceback.print_exc()
            info["families"][name] = {"error": f"{type(e).__name__}: {e}"}
        # the block sources, for reading what this version computes
        try:
            if os.path.exists(os.path.join(out_dir, f"src-{family}.py")):
                continue
            with open(os.path.join(out_dir, f"src-{family}.py"), "w") as f:
                f.write(inspect.getsource(cls))
                for attr_name in dir(mod):
                    if attr_name.endswith(("Router", "Experts", "Moe", "MoE", "MLP")) and attr_name != cls_name:
                        f.write("\n\n" + inspect.getsource(getattr(mod, attr_name)))
        except Exception:
            pass
    # How torch.topk orders equal values on the CPU (our gates let the lower expert id win).
    v = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0, 2.0]])
    info["torch_topk_ties"] = {
        "values": v.tolist()[0],
        "topk2_sorted": torch.topk(v, 2, dim=-1).indices.tolist()[0],
        "topk3_unsorted": torch.topk(v, 3, dim=-1, sorted=False).indices.tolist()[0],
        "topk2_softmax": torch.topk(torch.softmax(v, dim=-1), 2, dim=-1).indices.tolist()[0],
        "topk2_of_64_equal": torch.topk(torch.zeros(1, 64), 2, dim=-1).indices.tolist()[0],
    }
    print("topk ties", info["torch_topk_ties"], flush=True)
    os.makedirs(out_dir, exist_ok=True)
    save_file(outputs, os.path.join(out_dir, "transformers-outputs.safetensors"))
    with open(os.path.join(out_dir, "transformers-info.json"), "w") as f:
        json.dump(info, f, indent=2)


if __name__ == "__main__":
    main()
