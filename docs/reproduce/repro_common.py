"""Shared helpers of the reproduction scripts: model loading, datasets (real or toy), metrics.

Real runs read datasets with the ``datasets`` library (a hub name or a local path); ``--smoke``
runs replace them with the toy model's synthetic scenes so every step runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import math
import re
import string
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import torch

try:  # run from a clone without installing: the repository root holds hooked_vlm/ and converters/
    import hooked_vlm  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default="llava-hf/llava-1.5-7b-hf", help="hub id, local folder, toy-llava or toy-chameleon")
    ap.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32", choices=list(DTYPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", "--num-examples", dest="n", type=int, default=2000,
                    help="examples per task (under torchrun write --num-examples: torchrun reads --n as its own option)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results table here (CSV)")
    ap.add_argument("--smoke", action="store_true", help="tiny end-to-end run on the toy model's synthetic scenes")
    ap.add_argument("--distributed", action="store_true",
                    help="data parallel under torchrun: batches round-robin over the ranks, rank 0 gathers and reports")


def load_model(args: argparse.Namespace) -> Any:
    from hooked_vlm import HookedVLM

    if args.smoke:
        args.n = min(args.n, 24)
    if getattr(args, "distributed", False):
        from hooked_vlm.analysis import distributed as dd

        if torch.device(args.device).type == "cuda":
            args.device = str(dd.local_device())  # one GPU per process: cuda:LOCAL_RANK
        args.rank, args.world_size = dd.init(args.device)
    return HookedVLM.from_pretrained(args.model, dtype=DTYPES[args.dtype], device=args.device)


def is_main(args: argparse.Namespace) -> bool:
    """True in a single-process run and on rank 0 of a distributed one (the process that reports)."""
    return getattr(args, "rank", 0) == 0


def map_batches(args: argparse.Namespace, items: list[Any], fn: Any, desc: str = "batches") -> list[Any] | None:
    """``fn(batch_index, chunk)`` -> one result per item of the chunk, over ``args.batch_size`` batches.

    Returns every item's result in dataset order; with ``--distributed`` each rank runs the batches
    ``i % world_size == rank`` and rank 0 gathers them (the other ranks get None). A batch holds the
    same items either way, so a distributed run gives the single-process numbers.
    """
    from tqdm.auto import tqdm

    if not getattr(args, "distributed", False):
        plan = list(enumerate(batches(items, args.batch_size)))
        return [r for b, chunk in tqdm(plan, desc=desc) for r in fn(b, chunk)]
    from hooked_vlm.analysis import distributed as dd

    mine = list(dd.rank_items(items, args.batch_size, args.rank, args.world_size))
    parts = [(b, fn(b, chunk)) for b, _, chunk in tqdm(mine, desc=f"{desc} [rank {args.rank}/{args.world_size}]",
                                                       position=args.rank)]
    merged = dd.gather_in_order(parts, args.device)
    return None if merged is None else [r for part in merged for r in part]


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


# ---------------------------------------------------------------- datasets
def load_hf_dataset(name: str, split: str, n: int, seed: int) -> Any:
    from datasets import load_dataset

    ds = load_dataset(name, split=split, streaming=False)
    return ds.shuffle(seed=seed).select(range(min(n, len(ds))))


def first_field(row: dict, names: tuple[str, ...]) -> Any:
    for k in names:
        if k in row and row[k] is not None:
            return row[k]
    raise KeyError(f"none of the fields {names} in the dataset row (fields: {', '.join(row)})")


def vqa_answers(row: dict) -> list[str]:
    ans = first_field(row, ("answers", "multiple_choice_answer", "answer"))
    if isinstance(ans, str):
        return [ans]
    return [a["answer"] if isinstance(a, dict) else str(a) for a in ans]


def caption_refs(row: dict) -> list[str]:
    refs = first_field(row, ("caption", "captions", "sentences", "raw"))
    if isinstance(refs, str):
        return [refs]
    return [r["raw"] if isinstance(r, dict) else str(r) for r in refs]


def toy_examples(kind: str, n: int, seed: int) -> list[dict]:
    """Toy scenes as examples: image, prompt, references; object cells for the ablation script."""
    from hooked_vlm.toy.data import GRID, make_scenes, prompt

    out = []
    for s in make_scenes(n, seed):
        cells = [(p // GRID, p % GRID) for p in s.object_patches(0)]
        out.append(dict(image=s.pil(), prompt=prompt(kind), refs=[s.answer(kind)], cells=cells,
                        label=s.answer(kind)))
    return out


# ---------------------------------------------------------------- metrics
_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return " ".join(w for w in text.split() if w not in _ARTICLES)


def vqa_accuracy(pred: str, answers: list[str]) -> float:
    """VQAv2 accuracy: min(#annotators giving the answer / 3, 1) after normalisation."""
    p = normalize_answer(pred.split("\n")[0])
    hits = sum(normalize_answer(a) == p for a in answers)
    return min(hits / 3.0, 1.0) if len(answers) >= 3 else float(hits > 0)


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i: i + n]) for i in range(len(words) - n + 1))


def cider_d(candidates: list[str], references: list[list[str]], sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al.; the coco-caption variant: clipped counts, length penalty, x10)."""
    tok = lambda s: normalize_answer(s).split()
    cands = [tok(c) for c in candidates]
    refs = [[tok(r) for r in rs] for rs in references]
    n_docs = len(refs)
    scores = []
    for n in range(1, 5):
        df: Counter = Counter()
        for rs in refs:
            df.update(set(g for r in rs for g in _ngrams(r, n)))
        log_n = math.log(max(n_docs, 1))

        def vec(words: list[str]) -> dict:
            c = _ngrams(words, n)
            return {g: tf * (log_n - math.log(max(df[g], 1.0))) for g, tf in c.items()}

        per = []
        for cw, rs in zip(cands, refs):
            vc = vec(cw)
            sims = []
            for rw in rs:
                vr = vec(rw)
                num = sum(min(vc[g], vr[g]) * vr[g] for g in vc if g in vr)
                den = math.sqrt(sum(v * v for v in vc.values())) * math.sqrt(sum(v * v for v in vr.values()))
                pen = math.exp(-((len(cw) - len(rw)) ** 2) / (2 * sigma**2))
                sims.append(pen * num / den if den > 0 else 0.0)
            per.append(sum(sims) / max(len(sims), 1))
        scores.append(per)
    return 10.0 * sum(sum(s) / len(s) for s in zip(*scores)) / len(cands) if cands else 0.0


def clean_generation(text: str) -> str:
    return re.split(r"</s>|<\|im_end\|>|\n\n", text)[0].strip()
