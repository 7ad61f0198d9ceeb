"""Forward time of HookedVLM / HF (sdpa) on Llama-4-shaped models, in one process, runs interleaved (run by hand:
`python benchmarks/bench_llama4.py` and `--dense`; results go to RESULTS.md by hand; targets: <= 1.05 with
``--dense``, <= 1.10 with MoE layers).

Default: the VLM (HF ``Llama4ForConditionalGeneration``, converted from its saved checkpoint): one image of 1 x 2
tiles + the global tile (Llama 4's 336 px tiles of 14 px patches: 24 x 24 patches + the class token per tile, pixel
shuffle to 144 LM tokens per tile, 432 image tokens) in a prompt of ``--tokens`` text tokens; the tower at a reduced
width (``--vision-hidden``, ``--vision-layers``). ``--lm-only``: the language model alone (HF ``Llama4ForCausalLM``).

The LM carries every Llama 4 part at a size where the blocks dominate: chunked local attention on the RoPE layers
(chunk 256 < the prompt), NoPE full-attention layers every 4th layer with temperature tuning, L2 q/k norm, GQA, and
MoE (16 experts, top-1 sigmoid routing on the expert input, a shared expert) on every second layer (Maverick's
interleave) unless ``--dense``.
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
from tests import tiny_llama4 as tl  # noqa: E402


def text_config(args) -> dict:
    heads = args.hidden // 64
    text = dict(vocab_size=32000, hidden_size=args.hidden, intermediate_size=args.hidden * 2,
                intermediate_size_mlp=args.hidden * 4, num_hidden_layers=args.layers, num_attention_heads=heads,
                num_key_value_heads=max(1, heads // 4), head_dim=64, attention_chunk_size=256, floor_scale=128,
                no_rope_layer_interval=4, num_local_experts=16, num_experts_per_tok=1,
                interleave_moe_layer_step=args.layers + 1 if args.dense else 2, max_position_embeddings=8192)
    if args.dense:
        text["moe_layers"] = []
    return text


def build_vlm(args):
    """(hf, ours, inputs) of a Llama-4-shaped VLM, ours loaded from HF's saved checkpoint (then deleted)."""
    import shutil
    import warnings

    from hooked_vlm import HookedVLM

    h = args.vision_hidden
    vision = dict(hidden_size=h, num_hidden_layers=args.vision_layers, num_attention_heads=h // 64,
                  intermediate_size=4 * h, vision_output_dim=2 * h, projector_input_dim=2 * h,
                  projector_output_dim=2 * h, image_size=336, patch_size=14)
    folder, hf = tl.make_vlm(text={**text_config(args), "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
                             vision=vision)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="the HF processor of .* could not be loaded")
            ours = HookedVLM.from_pretrained(str(folder), processor=None).eval()
    finally:
        shutil.rmtree(folder)
    inputs = tl.vlm_batch([[(1, 2)]], [0], text_len=args.tokens, tile=336, per_tile=144)
    inputs.pop("attention_mask")  # batch 1, no padding: both run their unmasked path
    return hf, ours, inputs


def measure_vlm(args) -> dict:
    hf, ours, inputs = build_vlm(args)
    with torch.no_grad():
        diff = (hf(**inputs).logits - ours(**inputs)).abs().max().item()
        t = interleaved_medians({"hf": lambda: hf(**inputs), "ours": lambda: ours(**inputs)}, args.repeats)
    return {"model": "llama4_vlm" + ("_dense" if args.dense else "_moe"), "hf_attn": hf.config._attn_implementation,
            "tokens": int(inputs["input_ids"].shape[1]), "tiles": int(inputs["pixel_values"].shape[0]),
            "image_tokens": int((inputs["input_ids"] == tl.PATCH).sum()),
            "moe_layers": list(ours.cfg.text.moe_layers or []),
            "params_M": round(sum(p.numel() for p in ours.parameters()) / 1e6, 1), "max_abs_logit_diff": diff,
            "hf_s": round(t["hf"], 3), "hooked_s": round(t["ours"], 3), "forward_ratio": round(t["ours"] / t["hf"], 3)}


def measure(args) -> dict:
    b = tl.make(text=text_config(args))
    ids = torch.randint(3, 32000, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    hf, ours = b.hf, b.model
    with torch.no_grad():
        diff = (hf(input_ids=ids).logits - ours(input_ids=ids)).abs().max().item()
        t = interleaved_medians({"hf": lambda: hf(input_ids=ids), "ours": lambda: ours(input_ids=ids)}, args.repeats)
    return {"model": "llama4_lm" + ("_dense" if args.dense else "_moe"), "hf_attn": hf.config._attn_implementation,
            "tokens": args.tokens, "moe_layers": list(ours.cfg.text.moe_layers or []),
            "params_M": round(sum(p.numel() for p in ours.parameters()) / 1e6, 1), "max_abs_logit_diff": diff,
            "hf_s": round(t["hf"], 3), "hooked_s": round(t["ours"], 3), "forward_ratio": round(t["ours"] / t["hf"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=600, help="text tokens (several attention chunks; the VLM adds its "
                    "image tokens)")
    ap.add_argument("--lm-only", action="store_true", help="the language model alone (Llama4ForCausalLM)")
    ap.add_argument("--vision-hidden", type=int, default=512)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--dense", action="store_true", help="no MoE layers (the dense target, <= 1.05)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(measure(args) if args.lm_only else measure_vlm(args), indent=1))


if __name__ == "__main__":
    main()
