"""Benchmark of attribution graphs (run by hand, not a test): time and peak memory of ``attribution_graph``
divided by one forward + backward of the same model on the same prompt (peak memory: above the level before the
call; on CPU the process's sampled RSS, with glibc made to map and unmap every allocation of 128 KiB or more).

Two models, random transcoders (``d_sae = --expansion x d_model``, about half the features active, so the counts
of feature nodes are far above a trained transcoder's; ``--max-feature-nodes`` bounds the rows computed):

* ``toy``: the shipped toy LLaVA (toy-llava) on one "what colour is the shape ?" scene (47 positions);
* ``gemma3``: a random Gemma-3-4B-shaped model at reduced width (34 layers, GQA 8/4 heads, sandwich norms,
  sliding / full layers 5:1, 256 image tokens on a 16 x 16 grid + 20 text tokens), ``--d-model`` wide.

    python benchmarks/bench_graph.py [--models toy,gemma3] [--d-model 256] [--max-feature-nodes 2048]
                                     [--batch-size 64] [--repeats 3] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_analysis import peak_extra  # noqa: E402
from bench_common import sync, table  # noqa: E402

from hooked_vlm import HookedVLM  # noqa: E402
from hooked_vlm.analysis.graph import attribution_graph  # noqa: E402
from tests import tiny_transcoders  # noqa: E402


def toy_case(device: str):
    import numpy as np

    from hooked_vlm.toy.data import make_scene
    from hooked_vlm.toy.tasks import ToyEncoder

    model = HookedVLM.from_pretrained("toy-llava", device=device)
    enc = ToyEncoder(model.processor)
    length = enc.first_answer_position("colour") + 1
    b = enc.batch([make_scene(np.random.default_rng(0))], ("colour",))
    return model, {"input_ids": b["input_ids"][:, :length].to(device),
                   "attention_mask": b["attention_mask"][:, :length].to(device),
                   "pixel_values": b["pixel_values"].to(device)}


def gemma3_case(d_model: int, device: str):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from tests import tiny_gemma3 as tg

    layer_types = (["sliding_attention"] * 5 + ["full_attention"]) * 6
    text = tg.gemma3_text_config(hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=34,
                                 num_attention_heads=8, num_key_value_heads=4, head_dim=d_model // 8,
                                 query_pre_attn_scalar=d_model // 8, sliding_window=64, layer_types=layer_types[:34],
                                 vocab_size=4096)
    vision = tg.siglip_vision_config(hidden_size=128, intermediate_size=256, num_hidden_layers=2, image_size=64,
                                     patch_size=4)
    torch.manual_seed(0)
    hf = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision,
                                                     image_token_index=tg.IMAGE_TOKEN, boi_token_index=tg.BOI,
                                                     eoi_token_index=tg.EOI, mm_tokens_per_image=256)).eval()
    folder = Path(tempfile.mkdtemp(prefix="bench_graph_gemma3_"))
    hf.save_pretrained(folder)
    del hf
    model = HookedVLM.from_pretrained(str(folder), processor=None, device=device)
    g = torch.Generator().manual_seed(0)
    words = torch.randint(4, 90, (24,), generator=g).tolist()
    ids = [tg.BOS] + words[:4] + [tg.BOI] + [tg.IMAGE_TOKEN] * 256 + [tg.EOI] + words[4:]
    input_ids = torch.tensor([ids], device=device)
    return model, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                   "pixel_values": torch.randn(1, 3, 64, 64, generator=g).to(device),
                   "token_type_ids": (input_ids == tg.IMAGE_TOKEN).long()}


def exact_cpu_peaks() -> None:
    """Make RSS sampling (bench_analysis.peak_extra on CPU) see every large tensor: glibc serves allocations of
    128 KiB and more by mmap and returns them on free (its default threshold grows after frees, so a second
    measurement would reuse memory freed by the first without growing RSS)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD fixed at 128 KiB (no dynamic adjustment)
        libc.malloc_trim(0)


def trimmed(fn):
    def run():
        if sys.platform.startswith("linux"):
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        return fn()
    return run


def forward_backward(model, inputs) -> None:
    with torch.enable_grad():
        logits = model(**inputs)
        logits[0, -1].max().backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="toy,gemma3")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--expansion", type=int, default=4)
    ap.add_argument("--max-feature-nodes", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    exact_cpu_peaks()
    rows = []
    for name in args.models.split(","):
        model, inputs = toy_case(args.device) if name == "toy" else gemma3_case(args.d_model, args.device)
        ts = tiny_transcoders.random_set(model, d_sae=args.expansion * model.cfg.d_model).to(args.device)

        def graph():
            return attribution_graph(model, inputs, ts, max_feature_nodes=args.max_feature_nodes,
                                     batch_size=args.batch_size)

        fns = {"graph": graph, "fwd+bwd": lambda: forward_backward(model, inputs)}
        # memory first (each measured above the level before it; the baseline's first call included)
        mem_fb, _ = peak_extra(trimmed(fns["fwd+bwd"]), args.device)
        mem_graph, g = peak_extra(trimmed(graph), args.device)
        times = {k: [] for k in fns}
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for k, fn in fns.items():
                sync(args.device)
                t = time.perf_counter()
                fn()
                sync(args.device)
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        label = f"{name} ({g.n_pos} pos, {g.n_features}/{g.n_active} features, batch {args.batch_size})"
        rows.append((f"{label}: time", f"{med['graph']:.2f} s / {med['fwd+bwd']:.3f} s",
                     f"{med['graph'] / med['fwd+bwd']:.0f}x"))
        rows.append((f"{label}: peak memory", f"{mem_graph / 2**20:.0f} MB / {mem_fb / 2**20:.0f} MB",
                     f"{mem_graph / mem_fb:.1f}x" if mem_fb >= 2**20 else "n/a (baseline < 1 MB)"))
    print(table(rows, header=("measure", "graph / one forward+backward", "ratio")))


if __name__ == "__main__":
    main()
