"""Forward time of HookedVLM / HF (sdpa) on a Cohere2-LM VLM (Aya Vision shaped: SigLIP + pixel-shuffle SwiGLU +
Cohere2), in one process, runs interleaved (run by hand: `python benchmarks/bench_cohere2.py`; results go to
RESULTS.md by hand; target: <= 1.05 for a dense LM kind).

The LM carries the Cohere2 parts at a size where it dominates the time: parallel attention + MLP blocks, bias-free
LayerNorms, RoPE on interleaved pairs in the sliding layers and none in the full ones (3 sliding : 1 full, window 256
shorter than the prompt), GQA, tied embeddings. The vision tower is small (one 8 x 8 px tile, 4 image tokens): the LM
is what differs from the other families. ``--family cohere2_vision`` times the Cohere2 Vision wrapper instead (the
same LM; its tower is read after post_layernorm and its projector has no norm).
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
from tests import tiny_cohere as tc  # noqa: E402


def build(family: str, text_tokens: int, layers: int, hidden: int):
    heads = hidden // 64
    text = tc.cohere2_text_config(
        vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 4), sliding_window=256,
        layer_types=["full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(layers)])
    make = tc.make_aya if family == "aya_vision" else tc.make_cohere2_vision
    folder, hf = make(text=text)
    if family == "aya_vision":
        inputs = tc.aya_batch(tc.aya_processor(), [[tc.SIZES[1]]], text_len=text_tokens)
    else:
        inputs = tc.cohere2_vision_batch([[1]], [0], text_len=text_tokens)
    inputs.pop("attention_mask", None)  # batch 1, no padding: both run their unmasked causal path
    return folder, hf, inputs


def measure(family: str, args) -> dict:
    from hooked_vlm import HookedVLM

    folder, hf, inputs = build(family, args.tokens, args.layers, args.hidden)
    hf = hf.eval()
    ours = HookedVLM.from_pretrained(str(folder), processor=None)
    with torch.no_grad():
        diff = (hf(**inputs).logits - ours(**inputs)).abs().max().item()
        t = interleaved_medians({"hf": lambda: hf(**inputs), "ours": lambda: ours(**inputs)}, args.repeats)
    return {"model": family, "hf_attn": hf.config.text_config._attn_implementation,
            "tokens": int(inputs["input_ids"].shape[1]),
            "params_M": round(sum(p.numel() for p in ours.parameters()) / 1e6, 1), "max_abs_logit_diff": diff,
            "hf_s": round(t["hf"], 3), "hooked_s": round(t["ours"], 3), "forward_ratio": round(t["ours"] / t["hf"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", choices=["aya_vision", "cohere2_vision"], default="aya_vision")
    ap.add_argument("--tokens", type=int, default=500, help="text tokens after the image")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.family, args), indent=1))


if __name__ == "__main__":
    main()
