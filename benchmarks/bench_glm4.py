"""Forward time of HookedVLM / HF (sdpa) on GLM-4.xV-shaped models, in one process, runs interleaved (run by hand:
`python benchmarks/bench_glm4.py --kind dense` and `--kind moe`; results go to RESULTS.md by hand; targets: <= 1.05
for the dense GLM-4 LM kind, <= 1.10 for the GLM-4.5 MoE kind).

The LM carries each kind's parts at a size where it dominates the time. dense (Glm4vForConditionalGeneration): sandwich
post-norms, fused gate_up MLP, q/k/v biases, partial (0.5) interleaved M-RoPE, GQA. moe (Glm4vMoeForConditionalGeneration):
layer 0 dense, the others 32 routed experts in 4 groups (2 kept) with the bias-corrected sigmoid router, top-4, one
ungated shared expert. The vision tower is the tiny one of tests/tiny_glm4v.py (one 4 x 6 patch image, 6 LM tokens).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_core import interleaved_medians  # noqa: E402
from tests import tiny_glm4v as tg  # noqa: E402


def build(kind: str, text_tokens: int, layers: int, hidden: int):
    heads = hidden // 64
    text = dict(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=max(1, heads // 4))
    vision = tg.vision_config(out_hidden_size=hidden)
    if kind == "dense":
        rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [4, 6, 6]}
        folder, hf = tg.make_glm4v(text=tg.text_config(**text, rope_parameters=rope), vision=vision)
    else:
        rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [4, 6, 6]}
        moe = tg.moe_text_config(**text, head_dim=64, rope_parameters=rope, moe_intermediate_size=hidden // 2,
                                 n_routed_experts=32, num_experts_per_tok=4, n_group=4, topk_group=2)
        folder, hf = tg.make_glm4v_moe(text=moe, vision=vision)
    inputs = tg.batch([[(1, 4, 6)]], [0])
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.randint(3, 90, (1, text_tokens))], dim=1)
    inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"],
                                             torch.zeros(1, text_tokens, dtype=torch.long)], dim=1)
    inputs.pop("attention_mask", None)  # batch 1, no padding: both run their unmasked causal path
    return folder, hf, inputs


def measure(kind: str, args) -> dict:
    from hooked_vlm import HookedVLM

    folder, hf, inputs = build(kind, args.tokens, args.layers, args.hidden)
    hf = hf.eval()
    ours = HookedVLM.from_pretrained(str(folder), processor=None)
    with torch.no_grad():
        diff = (hf(**inputs).logits - ours(**inputs)).abs().max().item()
        t = interleaved_medians({"hf": lambda: hf(**inputs), "ours": lambda: ours(**inputs)}, args.repeats)
    return {"kind": kind, "architecture": ours.cfg.architecture, "hf_attn": hf.config.text_config._attn_implementation,
            "tokens": int(inputs["input_ids"].shape[1]),
            "params_M": round(sum(p.numel() for p in ours.parameters()) / 1e6, 1), "max_abs_logit_diff": diff,
            "hf_s": round(t["hf"], 3), "hooked_s": round(t["ours"], 3), "forward_ratio": round(t["ours"] / t["hf"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["dense", "moe"], default="dense")
    ap.add_argument("--tokens", type=int, default=500, help="text tokens after the image")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.kind, args), indent=1))


if __name__ == "__main__":
    main()
