"""Narrow Gate (arXiv 2412.06646) Table 1: VQA / captioning under attention knockout.

Conditions (post-softmax weights set to 0 without renormalising, every head of every layer, on
the prompt and on every generated token):

* ``none``        no knockout
* ``gate``        the gate position as a key for every query: ``eoi`` on models with an
                  end-of-image marker (Chameleon, Emu3, Janus, Pixtral), else the last image token
* ``image->text`` every image-region position except EOI (BOI + image tokens) as keys for text queries
* ``random``      one random image token as a key for every query (control; ``--n-random`` draws)

Real run (GPU; datasets through the ``datasets`` library)::

    python docs/reproduce/narrow_gate_table1.py --model facebook/chameleon-7b --n 2000 \\
        --vqa-dataset lmms-lab/VQAv2 --vqa-split validation --caption-dataset lmms-lab/flickr30k --caption-split test

Smoke run on the toy model (seconds, CPU)::

    python docs/reproduce/narrow_gate_table1.py --model toy-llava --smoke
    python docs/reproduce/narrow_gate_table1.py --model toy-chameleon --smoke   # the toy native model
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repro_common import (add_common_args, caption_refs, cider_d, clean_generation, first_field,  # noqa: E402
                          is_main, load_hf_dataset, load_model, map_batches, toy_examples, vqa_accuracy,
                          vqa_answers)

VQA_TEMPLATE = "{image}{question}\nAnswer the question using a single word or phrase. Answer:"
LLAVA_VQA_TEMPLATE = "USER: {image}\n{question}\nAnswer the question using a single word or phrase. ASSISTANT:"
CAPTION_TEMPLATE = "{image}Provide a one-sentence caption for the provided image."
LLAVA_CAPTION_TEMPLATE = "USER: {image}\nProvide a one-sentence caption for the provided image. ASSISTANT:"


def gate_span(spans: Any) -> torch.Tensor:
    from hooked_vlm.analysis import span_mask

    return span_mask(spans, "eoi" if "eoi" in spans else "image_last")


def image_to_text_span(spans: Any) -> torch.Tensor:
    from hooked_vlm.analysis import image_region_mask

    region = image_region_mask(spans)
    return region & ~spans.mask("eoi") if "eoi" in spans else region


def random_image_span(seed: int, draw: int) -> Callable[[Any], torch.Tensor]:
    """One random image-content token per batch item, drawn at the first forward of a batch (the
    prompt) and kept while generating; ``draw`` (the batch's number) picks the random stream."""
    state: dict[str, Any] = {}

    def span(spans: Any) -> torch.Tensor:
        image = spans.mask("image")
        if "mask" not in state:
            g = torch.Generator().manual_seed(seed * 100_003 + draw)
            m = torch.zeros_like(image)
            for b in range(image.shape[0]):
                pos = image[b].nonzero().flatten()
                m[b, pos[torch.randint(len(pos), (1,), generator=g)]] = True
            state["mask"] = m
        m = state["mask"]
        return torch.cat([m, torch.zeros(m.shape[0], image.shape[1] - m.shape[1], dtype=m.dtype, device=m.device)], 1)

    return span


def condition_hooks(model: Any, condition: str, seed: int, draw: int = 0) -> list:
    from hooked_vlm.analysis import knockout_hooks

    if condition == "none":
        return []
    if condition == "gate":
        return knockout_hooks(model, src=gate_span, dst="all", mode="zero")
    if condition == "image->text":
        return knockout_hooks(model, src=image_to_text_span, dst="text", mode="zero")
    if condition == "random":
        return knockout_hooks(model, src=random_image_span(seed, draw), dst="all", mode="zero")
    raise ValueError(condition)


def task_examples(args: argparse.Namespace, model: Any, task: str) -> list[dict]:
    if args.smoke:
        return toy_examples("colour" if task == "vqa" else "caption", args.n, args.seed + (task == "caption"))
    token = getattr(model.processor, "image_token", "<image>")
    chat = not model.cfg.native_multimodal
    if task == "vqa":
        ds = load_hf_dataset(args.vqa_dataset, args.vqa_split, args.n, args.seed)
        tmpl = LLAVA_VQA_TEMPLATE if chat else VQA_TEMPLATE
        return [dict(image=r["image"].convert("RGB"), prompt=tmpl.format(image=token, question=first_field(r, ("question",))),
                     refs=vqa_answers(r)) for r in ds]
    ds = load_hf_dataset(args.caption_dataset, args.caption_split, args.n, args.seed)
    tmpl = LLAVA_CAPTION_TEMPLATE if chat else CAPTION_TEMPLATE
    return [dict(image=r["image"].convert("RGB"), prompt=tmpl.format(image=token), refs=caption_refs(r)) for r in ds]


def run_task(args: argparse.Namespace, model: Any, examples: list[dict], cond: str, seed: int, max_new_tokens: int,
             first_draw: int = 0) -> list[str] | None:
    """Greedy answers under ``cond``'s knockout, in example order (None on ranks other than 0)."""

    def answer(b: int, chunk: list[dict]) -> list[str]:
        hooks = condition_hooks(model, cond, seed, first_draw + b)
        inputs = model.prepare_inputs(images=[e["image"] for e in chunk], text=[e["prompt"] for e in chunk],
                                      padding_side="left")
        gen = model.generate(**inputs, max_new_tokens=max_new_tokens, fwd_hooks=hooks)
        return [clean_generation(g) for g in ([gen] if isinstance(gen, str) else gen)]

    return map_batches(args, examples, answer, desc=f"{cond}")


def main(argv: list[str] | None = None) -> Any:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(ap)
    ap.add_argument("--vqa-dataset", default="lmms-lab/VQAv2")
    ap.add_argument("--vqa-split", default="validation")
    ap.add_argument("--caption-dataset", default="lmms-lab/flickr30k")
    ap.add_argument("--caption-split", default="test")
    ap.add_argument("--n-random", type=int, default=3, help="draws of the random-token control")
    args = ap.parse_args(argv)
    model = load_model(args)
    data = {task: task_examples(args, model, task) for task in ("vqa", "caption")}
    rows = []
    conditions = ["none", "gate", "image->text"] + [f"random#{i}" for i in range(args.n_random)]
    for cond in conditions:
        name, seed = cond.split("#")[0], args.seed + len(rows)
        vqa = run_task(args, model, data["vqa"], name, seed, 20 if not args.smoke else 3)
        n_vqa_batches = -(-len(data["vqa"]) // args.batch_size)  # the caption batches draw after the VQA ones
        cap = run_task(args, model, data["caption"], name, seed, 60 if not args.smoke else 10, n_vqa_batches)
        if not is_main(args):
            rows.append({})
            continue
        acc = sum(vqa_accuracy(p, e["refs"]) for p, e in zip(vqa, data["vqa"])) / len(vqa)
        cider = cider_d(cap, [e["refs"] for e in data["caption"]])
        rows.append(dict(condition=cond.split("#")[0], vqa_accuracy=acc, caption_cider=cider))
        print(f"{cond:12s} VQA {acc:.3f}  CIDEr {cider:.3f}  e.g. {vqa[0]!r} / {cap[0]!r}")
    if not is_main(args):
        return None
    df = pd.DataFrame(rows).groupby("condition", sort=False).mean().reset_index()
    print(df.to_string(index=False))
    if args.out:
        df.to_csv(args.out, index=False)
    return df


if __name__ == "__main__":
    main()
