"""Device maps on one machine: load time and peak RSS with and without a map, and what the map costs per forward.

A random LLaVA-shaped checkpoint (bench_core's builder) is loaded in fresh subprocesses three ways:
plain (device="cpu"), device_map="auto" with max_memory={"cpu": two thirds of the weights} plus disk offload
(the rest streams from the checkpoint into the offload folder, never held in RAM), and the same map's forward
and greedy generate vs the plain model's (logit diff, tokens equal, time ratio). On a CPU-only machine the map's
cost is accelerate's hooks plus re-reading the offloaded weights from the offload folder every forward.

    python benchmarks/bench_device_map.py                 # ~100M parameters, fp32
    python benchmarks/bench_device_map.py --layers 2 --hidden 128 --vocab 1000   # a smoke run
Results go to benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(folder: str, mode: str, cpu_bytes: int, offload: str) -> None:
    """One load in this fresh process; prints {seconds, rss_growth_bytes, device_map} as json."""
    torch.set_num_threads(2)
    import accelerate  # noqa: F401  (imports are not part of the load's memory)
    from accelerate.utils import offload_weight  # noqa: F401
    from hooked_vlm import HookedVLM
    from hooked_vlm.loading import converter_for
    from hooked_vlm.devices import plan_device_map  # noqa: F401

    converter_for(Path(folder))
    # ru_maxrss survives exec (the parent's peak): reset the kernel's high-water mark to the current RSS instead
    open("/proc/self/clear_refs", "w").write("5")
    before = _status_kb("VmRSS") * 1024
    t0 = time.perf_counter()
    if mode == "plain":
        model = HookedVLM.from_pretrained(folder, processor=None)
    else:
        model = HookedVLM.from_pretrained(folder, processor=None, device_map="auto", max_memory={"cpu": cpu_bytes},
                                          offload=offload)
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM") * 1024
    print(json.dumps({"seconds": seconds, "rss_growth": peak - before, "device_map": model.device_map}))


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field} (peak RSS is measured on Linux only)")


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--load-only", action="store_true", help="only the load rows (time, peak RSS)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        folder, mode, cpu_bytes, offload = args.child
        return child(folder, mode, int(cpu_bytes), offload)

    from benchmarks.bench_core import build_checkpoint, inputs_for, interleaved_medians
    from hooked_vlm import HookedVLM
    from hooked_vlm.devices import device_bytes, format_device_map, no_split_classes
    from transformers import AutoConfig

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        build_checkpoint(folder, args.layers, args.hidden, args.vocab)
        weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        cpu_bytes = weights * 2 // 3
        plain_load = run_child(str(folder), "plain", "0", "-")
        mapped_load = run_child(str(folder), "auto", str(cpu_bytes), str(Path(tmp) / "off_child"))
        if args.load_only:
            print(f"{weights / 2**20:.0f} MiB of fp32 weights; map for max_memory cpu={cpu_bytes / 2**20:.0f} MiB + disk:")
            print(f"  {mapped_load['device_map']}")
            for name, r in (("plain", plain_load), ("device map", mapped_load)):
                print(f"| {name} | load {r['seconds']:.2f} s | peak RSS growth {r['rss_growth'] / 2**20:.0f} MiB "
                      f"({r['rss_growth'] / weights:.2f}x weights) |")
            return

        plain = HookedVLM.from_pretrained(str(folder), processor=None)
        mapped = HookedVLM.from_pretrained(str(folder), processor=None, device_map="auto",
                                           max_memory={"cpu": cpu_bytes}, offload=str(Path(tmp) / "off"))
        # accelerate's hooks alone: a per-block map with every entry on the CPU, hooks forced (no transfers, no
        # offload): what a multi-GPU map adds per module call besides the copies at block boundaries
        from accelerate import dispatch_model

        hooked = HookedVLM.from_pretrained(str(folder), processor=None)
        entries = [n for n, m in hooked.named_children() if n != "blocks" and any(True for _ in m.parameters())]
        dispatch_model(hooked, {**{n: "cpu" for n in entries}, **{f"blocks.{l}": "cpu" for l in range(args.layers)}},
                       main_device="cpu", force_hooks=True, preload_module_classes=no_split_classes(hooked))
        inputs = inputs_for(AutoConfig.from_pretrained(folder))
        with torch.no_grad():
            diff = (plain(**inputs) - mapped(**inputs)).abs().max().item()
            times = interleaved_medians({"plain": lambda: plain(**inputs), "mapped": lambda: mapped(**inputs),
                                         "hooked": lambda: hooked(**inputs)}, args.repeats)
            gen = {}
            for name, model in (("plain", plain), ("mapped", mapped), ("hooked", hooked)):
                t0 = time.perf_counter()
                gen[name] = model.generate(**inputs, max_new_tokens=args.new_tokens, return_type="tokens")
                gen[name + "_s"] = time.perf_counter() - t0
        plan = mapped.device_map
        n_params = sum(p.numel() for p in plain.parameters())
        print(f"LLaVA-shaped random model: {n_params / 1e6:.0f}M parameters, fp32, {weights / 2**20:.0f} MiB of "
              f"safetensors; map for max_memory cpu={cpu_bytes / 2**20:.0f} MiB + disk offload:")
        for line in format_device_map(plan, device_bytes(mapped, plan)):
            print(f"  {line}")
        print("| | plain | device map (cpu + disk) | per-block hooks only (all on cpu) |\n|---|---|---|---|")
        print(f"| load time | {plain_load['seconds']:.2f} s | {mapped_load['seconds']:.2f} s | |")
        print(f"| peak RSS growth during load | {plain_load['rss_growth'] / 2**20:.0f} MiB "
              f"({plain_load['rss_growth'] / weights:.2f}x weights) | {mapped_load['rss_growth'] / 2**20:.0f} MiB "
              f"({mapped_load['rss_growth'] / weights:.2f}x weights) | |")
        print(f"| forward ({inputs['input_ids'].shape[1]} tokens), median of {args.repeats} | {times['plain']:.3f} s | "
              f"{times['mapped']:.3f} s ({times['mapped'] / times['plain']:.2f}x) | "
              f"{times['hooked']:.3f} s ({times['hooked'] / times['plain']:.2f}x) |")
        print(f"| greedy generate, {args.new_tokens} new tokens | {gen['plain_s']:.2f} s | {gen['mapped_s']:.2f} s "
              f"({gen['mapped_s'] / gen['plain_s']:.2f}x) | {gen['hooked_s']:.2f} s "
              f"({gen['hooked_s'] / gen['plain_s']:.2f}x) |")
        print(f"| generated tokens = plain | | {torch.equal(gen['plain'], gen['mapped'])} | "
              f"{torch.equal(gen['plain'], gen['hooked'])} |")
        print(f"| max abs logit diff vs plain | | {diff:.1e} | |")


if __name__ == "__main__":
    main()
