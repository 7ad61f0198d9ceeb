"""Forward time of HookedVLM / HF (sdpa where HF offers it) on a Gemma-3-shaped and a Qwen3-VL-MoE-shaped random
model, in one process (run by hand: `python benchmarks/bench_families.py`; results go to RESULTS.md by hand).

The language models carry each family's own parts at a size where they dominate the time (Gemma 3: sandwich norms,
5:1 sliding / full layers with their own RoPE tables, qk-norm, a bidirectional image block; Qwen3-VL-MoE: DeepStack,
interleaved M-RoPE, top-2 of 8 experts). The vision towers are small: the LM is what differs from the other families.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_core import interleaved_medians  # noqa: E402
from tests import tiny_gemma3 as tg3  # noqa: E402
from tests import tiny_qwen3vl as tq3  # noqa: E402
from tests.tiny_qwen_idefics import qwen_batch  # noqa: E402


def gemma3(text_tokens: int, layers: int, hidden: int):
    heads = hidden // 64
    text = tg3.gemma3_text_config(
        vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=64, query_pre_attn_scalar=64,
        sliding_window=128, layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                                         for i in range(layers)])
    folder, hf = tg3.make_gemma3(folder=Path(tempfile.mkdtemp(prefix="bench_gemma3_")), text=text, processor=False)
    inputs = tg3.gemma3_batch(hf, [1], [0], text_len=text_tokens)
    return folder, hf, inputs


def qwen3vl_moe(text_tokens: int, layers: int, hidden: int):
    heads = hidden // 64
    text = tq3.moe_text_config(
        vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 3, moe_intermediate_size=hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=64,
        num_experts=8, num_experts_per_tok=2, mlp_only_layers=[], decoder_sparse_step=1,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [16, 8, 8],
                         "mrope_interleaved": True})
    folder, hf = tq3.make_qwen3vl_moe(folder=Path(tempfile.mkdtemp(prefix="bench_qwen3vl_moe_")), text=text,
                                      vision=tq3.vision_config(out_hidden_size=hidden))
    inputs = qwen_batch([[(1, 8, 8)]], [0], text_len=text_tokens)
    return folder, hf, inputs


def measure(name: str, build, args) -> dict:
    from hooked_vlm import HookedVLM

    folder, hf, inputs = build(args.tokens, args.layers, args.hidden)
    hf = hf.eval()
    ours = HookedVLM.from_pretrained(str(folder), processor=None)
    with torch.no_grad():
        diff = (hf(**inputs).logits - ours(**inputs)).abs().max().item()
        t = interleaved_medians({"hf": lambda: hf(**inputs), "ours": lambda: ours(**inputs)}, args.repeats)
    return {"model": name, "hf_attn": hf.config._attn_implementation, "tokens": int(inputs["input_ids"].shape[1]),
            "params_M": round(sum(p.numel() for p in ours.parameters()) / 1e6, 1), "max_abs_logit_diff": diff,
            "hf_s": round(t["hf"], 3), "hooked_s": round(t["ours"], 3), "forward_ratio": round(t["ours"] / t["hf"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=500, help="text tokens after the image")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name, build in (("gemma3", gemma3), ("qwen3vl_moe", qwen3vl_moe)):
        print(json.dumps(measure(name, build, args), indent=1))


if __name__ == "__main__":
    main()
