"""Benchmark of Llama 3.2 Vision (Mllama) support (run by hand, not a test).

1. Forward, HookedVLM / HF (sdpa) on the same random Mllama-shaped checkpoint and inputs (target <= 1.05).
2. Knockout of every image key for every text row through ``cross_attn.hook_mask`` (every cross-attention layer) /
   the plain forward (target <= 1.15): the knockout hook builds the bool [batch, 1, q, key] mask, SDPA runs with it.

The default shape is Mllama-like where it matters -- 8 LM layers with cross-attention every 4th (layers 3, 7), one
image of 4 tiles of 448 px at patch 14 (4 x 1025 = 4100 keys), a two-stage tower of 8 local + 2 global layers -- at a
narrow width so it runs on a CPU; pass --d-model 4096 --d-mlp 14336 --heads 32 --layers 40 on a big machine.

    python benchmarks/bench_mllama.py [--d-model 512] [--text 256] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import interleaved_medians  # noqa: E402
from hooked_vlm import HookedVLM  # noqa: E402
from hooked_vlm.analysis.cross_attention import cross_knockout_hooks  # noqa: E402
from hooked_vlm.analysis import forward_with_hooks  # noqa: E402


def build(folder: Path, args: argparse.Namespace) -> None:
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    d_v = args.vision_width
    config = MllamaConfig(
        text_config=dict(vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=args.d_mlp,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=max(args.heads // 4, 1),
                         cross_attention_layers=list(range(3, args.layers, 4)), max_position_embeddings=8192,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2),
        vision_config=dict(hidden_size=d_v, intermediate_size=4 * d_v, num_hidden_layers=args.vision_layers,
                           num_global_layers=2, attention_heads=max(d_v // 64, 1), image_size=args.image_size,
                           patch_size=14, max_num_tiles=4, intermediate_layers_indices=[1, 3, 5],
                           vision_output_dim=4 * d_v),
        image_token_index=args.vocab)
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(config)
    with torch.no_grad():  # open the gates (HF inits them at 0)
        for name, p in model.named_parameters():
            if "gate" in name and p.numel() == 1:
                p.fill_(0.5)
    model.save_pretrained(folder)


def inputs(hf_config, text: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    vc = hf_config.vision_config
    ids = [1, hf_config.image_token_id] + torch.randint(3, 1000, (text,), generator=g).tolist()
    n = len(ids)
    cam = torch.zeros(1, n, 1, 4, dtype=torch.long)
    cam[:, 1:] = 1  # every position from the placeholder on sees the image's 4 tiles (the processor's layout)
    return dict(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, n, dtype=torch.long),
                pixel_values=torch.randn(1, 1, 4, 3, vc.image_size, vc.image_size, generator=g),
                aspect_ratio_ids=torch.tensor([[6]]), aspect_ratio_mask=torch.ones(1, 1, 4, dtype=torch.long),
                cross_attention_mask=cam)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--d-mlp", type=int, default=1536)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--vision-width", type=int, default=256)
    ap.add_argument("--vision-layers", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--text", type=int, default=256, help="text tokens after the image placeholder")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    from transformers import MllamaForConditionalGeneration

    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp), args)
        hf = MllamaForConditionalGeneration.from_pretrained(tmp, attn_implementation="sdpa").eval().to(args.device)
        model = HookedVLM.from_pretrained(tmp, processor=None, device=args.device)
    inp = {k: v.to(args.device) for k, v in inputs(hf.config, args.text, args.device).items()}
    knock = cross_knockout_hooks(model, keys="image", queries="text")
    with torch.no_grad():
        diff = (hf(**inp).logits - model(**inp)).abs().max().item()
        times = interleaved_medians({
            "hf": lambda: hf(**inp),
            "ours": lambda: model(**inp),
            "knockout": lambda: forward_with_hooks(model, inp, knock),
        }, args.repeats, args.device)
    n_keys = 4 * ((args.image_size // 14) ** 2 + 1)
    print(f"Mllama-shaped: {args.layers} LM layers (cross at {list(range(3, args.layers, 4))}), d_model {args.d_model}, "
          f"{inp['input_ids'].shape[1]} text positions, {n_keys} image keys, device {args.device}")
    print(f"max abs logit diff vs HF: {diff:.2e}")
    print(f"forward HookedVLM / HF sdpa: {times['ours']:.3f} s / {times['hf']:.3f} s = {times['ours'] / times['hf']:.3f} "
          "(target <= 1.05)")
    print(f"knockout (every image key, every text row, every cross layer) / plain forward: {times['knockout']:.3f} s / "
          f"{times['ours']:.3f} s = {times['knockout'] / times['ours']:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
