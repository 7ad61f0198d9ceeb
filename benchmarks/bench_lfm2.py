"""Forward and greedy-generate time of HookedVLM / HF on an LFM2-VL-shaped random model, in one process (run by hand:
`python benchmarks/bench_lfm2.py`; results go to RESULTS.md by hand, from a quiet machine).

The language model is LFM2-shaped (LFM2-VL-450M's layer pattern scaled: 10 short-convolution layers of kernel 3 and
6 GQA attention layers with q/k norms, in the published order) at a size where it dominates the time; the SigLIP2
NaFlex tower is small. HF runs its torch reference path for the conv (``causal_conv1d`` is not installed here). The
generate row compares greedy tokens too: ours with the conv window in our KV cache against HF's ``generate``.
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
from tests import tiny_lfm2vl as tl  # noqa: E402

#: LFM2-VL-450M's layer_types (tests/real_configs/LiquidAI__LFM2-VL-450M.json), cut or repeated to --layers
PATTERN = ["conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv", "conv", "full_attention", "conv",
           "full_attention", "conv", "full_attention", "conv", "full_attention", "conv"]


def lfm2vl(text_tokens: int, layers: int, hidden: int):
    heads = hidden // 64
    text = tl.text_config(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 6, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                          layer_types=[PATTERN[i % len(PATTERN)] for i in range(layers)], block_multiple_of=256)
    folder, hf = tl.make_lfm2vl(folder=Path(tempfile.mkdtemp(prefix="bench_lfm2vl_")), text=text, save_tokenizer=False)
    # one 16 x 16-patch tile (64 image tokens), then the text (ids below 100: no marker or image id)
    inputs = tl.lfm2vl_batch([[[(16, 16)]]], [0], text_len=text_tokens, max_patches=256)
    return folder, hf.eval(), inputs


def main() -> None:
    from hooked_vlm import HookedVLM

    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=500, help="text tokens after the image")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder, hf, inputs = lfm2vl(args.tokens, args.layers, args.hidden)
    ours = HookedVLM.from_pretrained(str(folder), processor=None)
    n = args.new_tokens
    with torch.no_grad():
        diff = (hf(**inputs).logits - ours(**inputs)).abs().max().item()
        forward = interleaved_medians({"hf": lambda: hf(**inputs), "ours": lambda: ours(**inputs)}, args.repeats)
        hf_tokens = hf.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        our_tokens = ours.generate(**inputs, max_new_tokens=n, return_type="tokens", stop_at_eos=False)
        gen = interleaved_medians({
            "hf": lambda: hf.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False),
            "ours": lambda: ours.generate(**inputs, max_new_tokens=n, return_type="tokens", stop_at_eos=False),
        }, max(1, args.repeats // 2))
    print(json.dumps({
        "model": "lfm2vl", "layer_types": ours.cfg.text.layer_types, "tokens": int(inputs["input_ids"].shape[1]),
        "params_M": round(sum(p.numel() for p in ours.parameters()) / 1e6, 1), "max_abs_logit_diff": diff,
        "hf_s": round(forward["hf"], 3), "hooked_s": round(forward["ours"], 3),
        "forward_ratio": round(forward["ours"] / forward["hf"], 3),
        "generate_tokens_equal": bool(torch.equal(hf_tokens, our_tokens)), "new_tokens": n,
        "hf_generate_s": round(gen["hf"], 3), "hooked_generate_s": round(gen["ours"], 3),
        "generate_ratio": round(gen["ours"] / gen["hf"], 3),
    }, indent=1))


if __name__ == "__main__":
    main()
