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


def device_mapped_model(folder: str, device_map: str, max_memory: str | None, offload: str | None):
    """HookedVLM loaded with ``from_pretrained(device_map=..., max_memory=..., offload=...)``: the device-mapped row.

    On a CPU-only machine ``device_map="auto"`` alone puts everything on "cpu" (no accelerate hooks, the plain
    model's speed); a ``--max-memory cpu=...`` budget below the model's size with ``--offload DIR`` streams the
    blocks that do not fit from disk, through accelerate's hooks."""
    import json

    from hooked_vlm import HookedVLM
    from hooked_vlm.devices import parse_max_memory

    dm = json.loads(device_map) if device_map.startswith("{") else device_map
    return HookedVLM.from_pretrained(folder, processor=None, device_map=dm, offload=offload,
                                     max_memory=parse_max_memory(max_memory) if max_memory else None)


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
    ap.add_argument("--device-map", default=None,
                    help='also time a model loaded with from_pretrained(device_map=...): "auto" or a JSON dict')
    ap.add_argument("--max-memory", default=None, help="with --device-map: e.g. cpu=300MiB (parse_max_memory)")
    ap.add_argument("--offload", default=None, help="with --device-map: 'cpu' or a folder for what does not fit")
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
        mapped = device_mapped_model(tmp, args.device_map, args.max_memory, args.offload) if args.device_map else None
        if mapped is not None:
            fns["mapped"] = lambda: run_ours(mapped)
        with torch.no_grad():
            same = torch.equal(run_hf().cpu(), run_ours().cpu())
            t = interleaved_medians(fns, args.repeats)
    prompt = inputs["input_ids"].shape[1]
    rows = [("greedy generate, HookedVLM / HF generate", f"{t['ours']:.3f} s / {t['hf']:.3f} s", f"**{t['ours'] / t['hf']:.3f}**"),
            ("tokens/s, HookedVLM / HF", f"{n / t['ours']:.1f} / {n / t['hf']:.1f}", ""),
            ("same tokens as HF", str(same), "")]
    if mapped is not None:
        where = sorted(set(mapped.device_map.values())) if mapped.device_map else ["cpu"]
        rows.append((f"device_map={args.device_map!r} (on {', '.join(where)}) generate / HF",
                     f"{t['mapped']:.3f} s / {t['hf']:.3f} s", f"**{t['mapped'] / t['hf']:.3f}**"))
    params = sum(p.numel() for p in ours.parameters()) / 1e6
    print(f"{params:.1f}M parameters, {args.layers} layers, d_model {args.hidden}, prompt {prompt} tokens, {n} new tokens, "
          f"{args.threads} threads, medians of {args.repeats} (interleaved), load average {os.getloadavg()[0]:.1f}")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
