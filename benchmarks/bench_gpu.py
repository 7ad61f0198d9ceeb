"""GPU benchmark: HookedVLM against HF on a random LLaVA-1.5-7B-shaped model (bf16, cuda), one command.

Measures, each as ours / HF on the same checkpoint in one process (timings interleaved, medians):
forward / HF sdpa forward; run_with_cache of the residual stream only and of every hook / HF forward;
greedy generate tokens/s; peak memory of a forward above the weights (CUDA allocator peak); load time
(from_pretrained of the saved checkpoint). Prints a Markdown table and appends it to RESULTS.md.

    python benchmarks/bench_gpu.py                         # 7B-shaped, bf16, cuda (~15 GB checkpoint in a temp dir)
    python benchmarks/bench_gpu.py --tiny --device cpu     # seconds; what the test suite runs (no RESULTS.md entry)
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import build_llava, interleaved_medians, llava_inputs, sync, table  # noqa: E402

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
#: LLaVA-1.5-7B: Llama-2-7B LM, CLIP ViT-L/14 at 336 px (576 image tokens)
SHAPE_7B = dict(layers=32, hidden=4096, heads=32, kv_heads=32, d_mlp=11008, vocab=32064, image_size=336, patch=14,
                vision_layers=24, vision_width=1024)
SHAPE_TINY = dict(layers=2, hidden=64, heads=2, kv_heads=1, d_mlp=128, vocab=512, image_size=28, patch=14,
                  vision_layers=1, vision_width=32)


def peak_forward_bytes(fn: Any, device: str) -> float:
    """CUDA allocator peak during ``fn()`` above what was allocated before it (NaN off CUDA)."""
    if torch.device(device).type != "cuda":
        return math.nan
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return float(torch.cuda.max_memory_allocated(device) - before)


def timed(fn: Any, device: str) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import LlavaForConditionalGeneration

    from hooked_vlm import HookedVLM

    shape, dtype, dev = (SHAPE_TINY if args.tiny else SHAPE_7B), DTYPES[args.dtype], args.device
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(dev) if dev.startswith("cuda") else "cpu",
                           "dtype": args.dtype, "shape": shape}
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        build_llava(Path(tmp), **shape, dtype=dtype, device=dev if torch.device(dev).type == "cuda" else "cpu")
        if torch.device(dev).type == "cuda":
            torch.cuda.empty_cache()
        res["load_hf_s"], hf = timed(lambda: LlavaForConditionalGeneration.from_pretrained(
            tmp, dtype=dtype, device_map=dev, attn_implementation="sdpa").eval(), dev)
        res["load_ours_s"], ours = timed(lambda: HookedVLM.from_pretrained(tmp, dtype=dtype, device=dev, processor=None), dev)
    res["params_B"] = sum(p.numel() for p in ours.parameters()) / 1e9
    inputs = llava_inputs(hf.config, args.text_tokens, dev, dtype)
    res["tokens"] = int(inputs["input_ids"].shape[1])
    n = args.new_tokens
    resid = lambda name: "hook_resid" in name
    fns = {
        "hf": lambda: hf(**inputs),
        "ours": lambda: ours(**inputs),
        "cache_resid": lambda: ours.run_with_cache(**inputs, names_filter=resid),
        "cache_all": lambda: ours.run_with_cache(**inputs),
    }
    gen = {
        "gen_hf": lambda: hf.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False),
        "gen_ours": lambda: ours.generate(**inputs, max_new_tokens=n, stop_at_eos=False, return_type="tokens"),
    }
    with torch.no_grad():
        res["max_abs_logit_diff"] = (hf(**inputs).logits.float() - ours(**inputs).float()).abs().max().item()
        res["same_generated_tokens"] = bool(torch.equal(gen["gen_hf"]().cpu(), gen["gen_ours"]().cpu()))
        res.update({f"{k}_s": v for k, v in interleaved_medians(fns, args.repeats, dev).items()})
        res.update({f"{k}_s": v for k, v in interleaved_medians(gen, args.gen_repeats, dev).items()})
        res["peak_hf_bytes"] = peak_forward_bytes(fns["hf"], dev)
        res["peak_ours_bytes"] = peak_forward_bytes(fns["ours"], dev)
        res["peak_cache_all_bytes"] = peak_forward_bytes(fns["cache_all"], dev)
        _, cache = ours.run_with_cache(**inputs)
        res["cache_all_bytes"] = sum(v.numel() * v.element_size() for v in cache.values())
        res["cache_entries"] = len(cache)
    return res


def rows_of(r: dict[str, Any], n_new: int) -> list[tuple[str, str, str]]:
    gb = lambda b: "n/a (cpu)" if math.isnan(b) else f"{b / 2**30:.2f} GiB"
    ratio = lambda a, b: "n/a" if math.isnan(a) or math.isnan(b) or b == 0 else f"**{a / b:.3f}**"
    return [
        ("forward, HookedVLM / HF sdpa", f"{r['ours_s']:.4f} s / {r['hf_s']:.4f} s", ratio(r["ours_s"], r["hf_s"])),
        ("run_with_cache, resid only / HF forward", f"{r['cache_resid_s']:.4f} s / {r['hf_s']:.4f} s",
         ratio(r["cache_resid_s"], r["hf_s"])),
        (f"run_with_cache, every hook ({r['cache_entries']} entries, {r['cache_all_bytes'] / 2**30:.2f} GiB) / HF forward",
         f"{r['cache_all_s']:.4f} s / {r['hf_s']:.4f} s", ratio(r["cache_all_s"], r["hf_s"])),
        (f"greedy generate ({n_new} new tokens), tokens/s HookedVLM / HF",
         f"{n_new / r['gen_ours_s']:.1f} / {n_new / r['gen_hf_s']:.1f}", ratio(r["gen_hf_s"], r["gen_ours_s"])),
        ("peak memory of a forward above the weights, HookedVLM / HF", f"{gb(r['peak_ours_bytes'])} / {gb(r['peak_hf_bytes'])}",
         ratio(r["peak_ours_bytes"], r["peak_hf_bytes"])),
        ("peak memory of run_with_cache (every hook) above the weights", gb(r["peak_cache_all_bytes"]), ""),
        ("load time (from_pretrained), HookedVLM / HF", f"{r['load_ours_s']:.2f} s / {r['load_hf_s']:.2f} s",
         ratio(r["load_ours_s"], r["load_hf_s"])),
        ("max abs logit difference; same greedy tokens as HF", f"{r['max_abs_logit_diff']:.3g}; {r['same_generated_tokens']}", ""),
    ]


def record(path: Path, r: dict[str, Any], rows: list[tuple[str, str, str]], args: argparse.Namespace) -> None:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    s = r["shape"]
    text = (f"\n## GPU (`benchmarks/bench_gpu.py`{' --tiny' if args.tiny else ''}), {when}\n\n"
            f"{r['device']}, torch {torch.__version__}, {args.dtype}; random LLaVA-shaped model, {r['params_B']:.2f}B parameters "
            f"(LM {s['layers']} layers, d_model {s['hidden']}, {s['heads']} heads / {s['kv_heads']} kv, d_mlp {s['d_mlp']}, "
            f"vocab {s['vocab']}; CLIP {s['vision_layers']} layers, width {s['vision_width']}), prompt {r['tokens']} tokens, "
            f"batch 1; medians of {args.repeats} (generate: {args.gen_repeats}), interleaved. "
            f"Generate ratio = HF time / ours (> 1: we are faster).\n\n{table(rows)}\n")
    with open(path, "a") as f:
        f.write(text)


def should_record(args: argparse.Namespace) -> bool:
    """--record / --no-record when given; otherwise record real runs and not --tiny ones."""
    return args.record if args.record is not None else not args.tiny


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    ap.add_argument("--tiny", action="store_true", help="a tiny shape (seconds on a CPU): checks the script, not the speed")
    ap.add_argument("--text-tokens", type=int, default=None, help="text tokens after the image (default 24; tiny 6)")
    ap.add_argument("--new-tokens", type=int, default=None, help="generated tokens (default 64; tiny 3)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 10; tiny 1)")
    ap.add_argument("--gen-repeats", type=int, default=None, help="timed generate repeats (default 3; tiny 1)")
    ap.add_argument("--record", action=argparse.BooleanOptionalAction, default=None,
                    help="append the table to RESULTS.md (default: yes, except with --tiny)")
    ap.add_argument("--results", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    ap.add_argument("--tmp-dir", default=None, help="where the random checkpoint is written (needs ~15 GB for 7B)")
    args = ap.parse_args(argv)
    for name, full, tiny in (("text_tokens", 24, 6), ("new_tokens", 64, 3), ("repeats", 10, 1), ("gen_repeats", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device; run on a GPU machine or pass --tiny --device cpu")
    r = measure(args)
    rows = rows_of(r, args.new_tokens)
    print(f"{r['device']}, {args.dtype}, {r['params_B']:.2f}B parameters, prompt {r['tokens']} tokens, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(table(rows))
    if should_record(args):
        record(Path(args.results), r, rows, args)
        print(f"appended to {args.results}")
    r["rows"] = rows
    return r


if __name__ == "__main__":
    main()
