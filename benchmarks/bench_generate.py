"""Greedy generate of HookedVLM / HF generate on the same random LLaVA-shaped model, one process, interleaved.

Default shape (the numbers quoted in issue 16): Llama LM of 8 layers, d_model 768 (12 heads of 64, d_mlp 2112),
32k vocabulary, CLIP tower at 224 px / 14 px patches (256 image tokens) + 84 text tokens = a 341-token prompt,
32 new tokens, 2 threads. Prints a Markdown table; the results are recorded in RESULTS.md by hand.

    python benchmarks/bench_generate.py                      # the table
    python benchmarks/bench_generate.py --device-map auto    # + a device-mapped row (from_pretrained(device_map=...))
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import build_llava, interleaved_medians, llava_inputs, table  # noqa: E402


def device_mapped_model(folder: str, device_map: str):
    """HookedVLM loaded with ``from_pretrained(..., device_map=...)``: the device-mapped row of the table.

    DEVICE-MAP HOOK: this row needs the device-map API (issue 16 part 1). Until from_pretrained takes
    ``device_map=``, it returns None and the row says so.
    """
    import inspect

    from hooked_vlm import HookedVLM
    from hooked_vlm.loading import load_pretrained

    if "device_map" not in inspect.signature(load_pretrained).parameters:
        return None
    return HookedVLM.from_pretrained(folder, processor=None, device_map=device_map)


def main(argv: list[str] | None = None) -> list[tuple[str, str, str]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--text-tokens", type=int, default=84)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device-map", default=None, help='also time a model loaded with from_pretrained(device_map=...), e.g. "auto"')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import LlavaForConditionalGeneration

    from hooked_vlm import HookedVLM

    with tempfile.TemporaryDirectory() as tmp:
        heads = max(args.hidden // 64, 1)
        build_llava(Path(tmp), args.layers, args.hidden, heads, heads, int(args.hidden * 2.75), args.vocab,
                    image_size=args.image_size)
        hf = LlavaForConditionalGeneration.from_pretrained(tmp, attn_implementation="sdpa").eval()
        ours = HookedVLM.from_pretrained(tmp, processor=None)
        inputs = llava_inputs(hf.config, args.text_tokens)
        n = args.new_tokens
        run_hf = lambda m=hf: m.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        run_ours = lambda m=ours: m.generate(**inputs, max_new_tokens=n, stop_at_eos=False, return_type="tokens")
        fns = {"hf": run_hf, "ours": run_ours}
        mapped = device_mapped_model(tmp, args.device_map) if args.device_map else None
        if mapped is not None:
            fns["mapped"] = lambda: run_ours(mapped)
        with torch.no_grad():
            same = torch.equal(run_hf().cpu(), run_ours().cpu())
            t = interleaved_medians(fns, args.repeats)
    prompt = inputs["input_ids"].shape[1]
    rows = [("greedy generate, HookedVLM / HF generate", f"{t['ours']:.3f} s / {t['hf']:.3f} s", f"**{t['ours'] / t['hf']:.3f}**"),
            ("tokens/s, HookedVLM / HF", f"{n / t['ours']:.1f} / {n / t['hf']:.1f}", ""),
            ("same tokens as HF", str(same), "")]
    if args.device_map:
        if mapped is None:
            rows.append((f"device_map={args.device_map!r} generate / HF", "from_pretrained has no device_map= yet", ""))
        else:
            rows.append((f"device_map={args.device_map!r} generate / HF", f"{t['mapped']:.3f} s / {t['hf']:.3f} s",
                         f"**{t['mapped'] / t['hf']:.3f}**"))
    params = sum(p.numel() for p in ours.parameters()) / 1e6
    print(f"{params:.1f}M parameters, {args.layers} layers, d_model {args.hidden}, prompt {prompt} tokens, {n} new tokens, "
          f"{args.threads} threads, medians of {args.repeats} (interleaved), load average {os.getloadavg()[0]:.1f}")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
