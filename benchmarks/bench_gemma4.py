"""Forward time of HookedVLM / HF (sdpa) on Gemma-4-shaped models, in one process, runs interleaved (run by hand:
`python benchmarks/bench_gemma4.py --variant ple_kv` and `--variant k_eq_v_moe`; results go to RESULTS.md by hand;
targets: <= 1.05 dense (ple_kv: E2B / E4B parts), <= 1.10 MoE (k_eq_v_moe: 26B-A4B parts)).

The LM carries the Gemma 4 parts at a size where it dominates the time: 4 sliding : 1 full layers (window 256,
shorter than the prompt), a global head twice the local one with proportional RoPE, and per variant either per-layer
inputs + KV sharing of the last third of the layers with double-wide MLPs (ple_kv), or k_eq_v global layers with one
KV head and the MoE block beside every dense MLP (k_eq_v_moe, bidirectional image attention on). The image tower is
the tiny one (one 8x12 px image, 6 soft tokens): the LM is what differs from other families.
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
from tests import tiny_gemma4 as tg  # noqa: E402


def build(variant: str, text_tokens: int, layers: int, hidden: int):
    heads = hidden // 64
    sizes = dict(vocab_size=32000, vocab_size_per_layer_input=32000, hidden_size=hidden,
                 intermediate_size=hidden * 3, num_hidden_layers=layers, num_attention_heads=heads,
                 num_key_value_heads=max(1, heads // 4), head_dim=64, global_head_dim=128, sliding_window=256,
                 layer_types=["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(layers)])
    if variant == "ple_kv":
        sizes.update(hidden_size_per_layer_input=64, num_kv_shared_layers=layers // 3)
    else:
        sizes.update(num_experts=16, top_k_experts=4, moe_intermediate_size=hidden // 2)
    folder, hf = tg.make_gemma4(variant, **sizes)
    inputs = tg.gemma4_batch([(4, [(8, 12)], text_tokens)], [0])
    inputs.pop("attention_mask", None)  # batch 1, no padding: both run their unmasked path
    return folder, hf, inputs


def measure(args) -> dict:
    from hooked_vlm import HookedVLM

    folder, hf, inputs = build(args.variant, args.tokens, args.layers, args.hidden)
    ours = HookedVLM.from_pretrained(str(folder), processor=None)
    with torch.no_grad():
        diff = (hf(**inputs).logits - ours(**inputs)).abs().max().item()
        t = interleaved_medians({"hf": lambda: hf(**inputs), "ours": lambda: ours(**inputs)}, args.repeats)
    return {"model": f"gemma4-{args.variant}", "hf_attn": hf.config.text_config._attn_implementation,
            "tokens": int(inputs["input_ids"].shape[1]),
            "params_M": round(sum(p.numel() for p in ours.parameters()) / 1e6, 1), "max_abs_logit_diff": diff,
            "hf_s": round(t["hf"], 3), "hooked_s": round(t["ours"], 3), "forward_ratio": round(t["ours"] / t["hf"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=["ple_kv", "k_eq_v_moe"], default="ple_kv")
    ap.add_argument("--tokens", type=int, default=500, help="text tokens after the image")
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(measure(args), indent=1))


if __name__ == "__main__":
    main()
