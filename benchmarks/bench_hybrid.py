"""HookedVLM / HF on Qwen3.5-shaped random models (hybrid: Gated DeltaNet + gated attention), one process, interleaved:
forward (dense and MoE) and greedy generate with the KV cache (recurrent + conv state). HF runs its torch path
(torch_chunk_gated_delta_rule / torch_recurrent_gated_delta_rule) unless flash-linear-attention is installed, which the
output reports (``hf_linear_kernels``). Run by hand: ``python benchmarks/bench_hybrid.py``; results go to RESULTS.md by
hand. Targets (issue 24): forward <= 1.05, MoE forward <= 1.10, generate <= 1.05.

    python benchmarks/bench_hybrid.py                          # 8 layers (6 linear, 2 full), width 1024, 500 tokens
    python benchmarks/bench_hybrid.py --layers 4 --hidden 256 --tokens 64 --repeats 2 --new-tokens 4   # smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_core import interleaved_medians  # noqa: E402
from tests import tiny_qwen35 as tq  # noqa: E402
from tests.tiny_qwen_idefics import qwen_batch  # noqa: E402


def build(moe: bool, text_tokens: int, layers: int, hidden: int):
    heads = hidden // 128
    text = tq.text_config(
        moe, vocab_size=32000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4), head_dim=128, linear_num_key_heads=max(1, hidden // 256),
        linear_num_value_heads=max(1, hidden // 128), linear_key_head_dim=128, linear_value_head_dim=128,
        layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)],
        rope_parameters={"rope_type": "default", "rope_theta": 1e7, "mrope_section": [6, 5, 5],
                         "mrope_interleaved": True, "partial_rotary_factor": 0.25},
        **({"moe_intermediate_size": hidden // 2, "shared_expert_intermediate_size": hidden // 2, "num_experts": 16,
            "num_experts_per_tok": 4} if moe else {"intermediate_size": hidden * 3}))
    folder, hf = tq.make_qwen35(moe, folder=Path(tempfile.mkdtemp(prefix="bench_qwen35_")), text=text,
                                vision=tq.vision_config(out_hidden_size=hidden))
    return folder, hf.eval(), qwen_batch([[(1, 8, 8)]], [0], text_len=text_tokens)


def measure(name: str, moe: bool, args) -> dict:
    from hooked_vlm import HookedVLM

    folder, hf, inputs = build(moe, args.tokens, args.layers, args.hidden)
    ours = HookedVLM.from_pretrained(str(folder), processor=None)
    with torch.no_grad():
        diff = (hf(**inputs).logits - ours(**inputs)).abs().max().item()
        t = interleaved_medians({"hf": lambda: hf(**inputs), "ours": lambda: ours(**inputs)}, args.repeats)
    row = {"model": name, "tokens": int(inputs["input_ids"].shape[1]), "hf_linear_kernels": FLA,
           "params_M": round(sum(p.numel() for p in ours.parameters()) / 1e6, 1), "max_abs_logit_diff": diff,
           "hf_s": round(t["hf"], 4), "hooked_s": round(t["ours"], 4), "forward_ratio": round(t["ours"] / t["hf"], 3)}
    if args.new_tokens:
        n = args.new_tokens
        with torch.no_grad():
            same = torch.equal(hf.generate(**inputs, max_new_tokens=n, do_sample=False),
                               ours.generate(**inputs, max_new_tokens=n, return_type="tokens"))
            g = interleaved_medians({
                "hf": lambda: hf.generate(**inputs, max_new_tokens=n, do_sample=False, min_new_tokens=n),
                "ours": lambda: ours.generate(**inputs, max_new_tokens=n, return_type="tokens", stop_at_eos=False)},
                args.repeats)
        row.update(new_tokens=n, same_greedy_tokens=same, hf_generate_s=round(g["hf"], 4),
                   hooked_generate_s=round(g["ours"], 4), generate_ratio=round(g["ours"] / g["hf"], 3))
    return row


FLA = "fla" if importlib.util.find_spec("fla") is not None else "torch path"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=500, help="text tokens after the image")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=20, help="greedy tokens of the generate row (0: no generate)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name, moe in (("qwen3.5", False), ("qwen3.5-moe", True)):
        print(json.dumps(measure(name, moe, args), indent=1))


if __name__ == "__main__":
    main()
