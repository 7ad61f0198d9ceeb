"""Benchmark of the analysis toolkit (run by hand, not a test).

1. Attention knockout cost: ``mask`` knockout (image -> text, every layer) forward time divided
   by the plain forward time on the same model and input (target <= 1.15); ``zero`` for reference
   (it needs the explicit attention path).
2. Logit-lens memory: peak extra memory of ``logit_lens`` over every layer (n_layers + 1 readouts)
   and every image token with a 32k vocabulary, above the plain forward's own peak (target < 1 GB).
   Materialising all of it would take (n_layers + 1) x 576 x 32000 x 4 bytes.

The model is LLaVA-shaped where it matters (32 layers, 576 image tokens on a 24 x 24 grid, 32k
vocabulary) with a narrower width by default so it runs on a laptop CPU; pass --d-model 4096
--d-mlp 11008 --heads 32 on a big machine (or --device cuda).

    python benchmarks/bench_analysis.py [--d-model 512] [--device cpu] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hooked_vlm import HookedVLM  # noqa: E402
from hooked_vlm.analysis import attention_knockout, forward_with_hooks, logit_lens  # noqa: E402
from tests import tiny  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_extra(fn, device: str) -> tuple[float, object]:
    """(peak memory above the level before the call, in bytes; fn's result)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, out
    base, peak, stop = rss_bytes(), [0], [False]

    def sample():
        while not stop[0]:
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    t = threading.Thread(target=sample)
    t.start()
    try:
        out = fn()
    finally:
        stop[0] = True
        t.join()
    return max(peak[0], rss_bytes()) - base, out


def timed(fn, repeats: int, device: str) -> float:
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--d-mlp", type=int, default=1376)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--text-len", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--skip-lens", action="store_true")
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    text = tiny.llama_text_config(vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=args.d_mlp,
                                  num_hidden_layers=args.layers, num_attention_heads=args.heads,
                                  num_key_value_heads=args.heads, max_position_embeddings=4096)
    vision = tiny.clip_vision_config(image_size=48, patch_size=2, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    folder, hf = tiny.make_llava(text=text, vision=vision, image_token_id=args.vocab - 1)
    inputs = tiny.llava_batch(hf, [1], [0], text_len=args.text_len)
    inputs["input_ids"][inputs["input_ids"] == tiny.IMAGE_TOKEN] = args.vocab - 1
    del hf
    gc.collect()
    model = HookedVLM.from_pretrained(str(folder), dtype=getattr(torch, args.dtype), device=args.device)
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    n_pos = inputs["input_ids"].shape[1]
    n_img = int((inputs["input_ids"] == args.vocab - 1).sum())
    print(f"model: {args.layers} layers, d_model {args.d_model}, vocab {args.vocab}, {n_pos} positions "
          f"({n_img} image tokens), {args.device} {args.dtype}, {torch.get_num_threads()} threads")

    plain = lambda: forward_with_hooks(model, inputs)
    mask = lambda: attention_knockout(model, inputs, src="image", dst="text", mode="mask")
    zero = lambda: attention_knockout(model, inputs, src="image", dst="text", mode="zero")
    if not args.skip_timing:
        plain(), mask(), zero()  # warm up
        t = {"plain": [], "mask": [], "zero": []}
        for _ in range(args.repeats):  # interleaved, so load changes hit all three alike
            for name, fn in (("plain", plain), ("mask", mask), ("zero", zero)):
                t[name].append(timed(fn, 1, args.device))
        t = {k: statistics.median(v) for k, v in t.items()}
        print(f"plain forward {t['plain']:.3f} s | mask knockout {t['mask']:.3f} s (ratio {t['mask'] / t['plain']:.3f}) | "
              f"zero knockout {t['zero']:.3f} s (ratio {t['zero'] / t['plain']:.3f})  [median of {args.repeats}]")
    if args.skip_lens:
        return

    m_plain, _ = peak_extra(plain, args.device)
    m_lens, lens = peak_extra(lambda: logit_lens(model, inputs, span="image", top_k=5, targets=[5, 7]), args.device)
    t_lens = timed(lambda: logit_lens(model, inputs, span="image", top_k=5, targets=[5, 7]), 1, args.device)
    naive = (args.layers + 1) * n_img * args.vocab * 4
    print(f"logit lens over {len(lens.layers)} readouts x {len(lens.positions)} image tokens x {args.vocab} vocab: "
          f"{t_lens:.2f} s; peak extra memory {m_lens / 2**20:.0f} MiB vs plain forward {m_plain / 2**20:.0f} MiB "
          f"-> {max(0, m_lens - m_plain) / 2**20:.0f} MiB above the forward "
          f"(materialising all logits would take {naive / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
