"""Token sequences and teacher-forced accuracy for the toy question kinds.

Shared by training (on the HF model) and by tests / the demo / the reproduction scripts (on a
HookedVLM): anything that maps (input_ids, pixel_values, attention_mask) to logits can be scored.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .data import QUESTION_KINDS, ToyScene, pixel_values, prompt

LogitsFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class ToyEncoder:
    """Token ids of prompts (image placeholder expanded) and answers, cached per string."""

    def __init__(self, processor: Any):
        self.processor = processor
        self.tok = processor.tokenizer
        self.pad_id = self.tok.pad_token_id
        self.eos_id = self.tok.eos_token_id
        self._prompts: dict[str, list[int]] = {}
        self._answers: dict[str, list[int]] = {}
        ip = processor.image_processor  # its normalisation (CLIP for toy-llava, Chameleon's [-1, 1] for toy-chameleon)
        self.normalisation = dict(mean=tuple(ip.image_mean), std=tuple(ip.image_std), scale=float(ip.rescale_factor))

    def prompt_ids(self, kind: str) -> list[int]:
        if kind not in self._prompts:
            from PIL import Image

            blank = Image.new("RGB", (self.processor.image_processor.crop_size["width"],) * 2)
            self._prompts[kind] = self.processor(images=[blank], text=[prompt(kind)], return_tensors="pt")["input_ids"][0].tolist()
        return self._prompts[kind]

    def answer_ids(self, answer: str) -> list[int]:
        if answer not in self._answers:
            self._answers[answer] = self.tok(answer, add_special_tokens=False)["input_ids"] + [self.eos_id]
        return self._answers[answer]

    def batch(self, scenes: list[ToyScene], kinds: tuple[str, ...] = QUESTION_KINDS) -> dict[str, Tensor]:
        """Every scene asked every kind: input_ids / attention_mask (right-padded), pixel_values,
        answer_mask (positions whose next token is an answer token), targets, kind index per row."""
        rows, answers, kind_idx, images = [], [], [], []
        for s in scenes:
            for k in kinds:
                rows.append(self.prompt_ids(k))
                answers.append(self.answer_ids(s.answer(k)))
                kind_idx.append(kinds.index(k))
                images.append(s.image)
        length = max(len(p) + len(a) for p, a in zip(rows, answers))
        n = len(rows)
        ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(n, length, dtype=torch.long)
        answer_mask = torch.zeros(n, length, dtype=torch.bool)
        for i, (p, a) in enumerate(zip(rows, answers)):
            seq = p + a
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            answer_mask[i, len(p) - 1: len(seq) - 1] = True
        targets = torch.roll(ids, -1, 1)
        return dict(input_ids=ids, attention_mask=mask, pixel_values=self.pixel_values(images), answer_mask=answer_mask,
                    targets=targets, kind=torch.tensor(kind_idx))

    def pixel_values(self, images: list[np.ndarray]) -> Tensor:
        """uint8 [h, w, 3] images -> pixel values normalised as the processor's image processor does."""
        return pixel_values(images, **self.normalisation)

    def first_answer_position(self, kind: str) -> int:
        """Position (in an unpadded prompt) whose logits predict the first answer token."""
        return len(self.prompt_ids(kind)) - 1


def answer_loss(logits: Float[Tensor, "n pos vocab"], batch: dict[str, Tensor]) -> Tensor:
    m = batch["answer_mask"]
    return torch.nn.functional.cross_entropy(logits[m].float(), batch["targets"][m])


def exact_match(logits: Float[Tensor, "n pos vocab"], batch: dict[str, Tensor]) -> Int[Tensor, " n"]:
    """1 where every answer token (and the end token) is the argmax under teacher forcing (= greedy decoding)."""
    wrong = (logits.argmax(-1) != batch["targets"]) & batch["answer_mask"]
    return (~wrong.any(-1)).long()


@torch.no_grad()
def accuracy(logits_fn: LogitsFn, encoder: ToyEncoder, scenes: list[ToyScene],
             kinds: tuple[str, ...] = QUESTION_KINDS, batch_size: int = 64) -> dict[str, float]:
    """Held-out exact-match accuracy per question kind, in percent."""
    hits: dict[str, list[int]] = {k: [] for k in kinds}
    for i in range(0, len(scenes), batch_size):
        b = encoder.batch(scenes[i: i + batch_size], kinds)
        ok = exact_match(logits_fn(b["input_ids"], b["pixel_values"], b["attention_mask"]), b)
        for k_i, k in enumerate(kinds):
            hits[k] += ok[b["kind"] == k_i].tolist()
    return {k: 100.0 * float(np.mean(v)) for k, v in hits.items()}


def hooked_logits_fn(model: Any, fwd_hooks: list | None = None) -> LogitsFn:
    """A LogitsFn running a HookedVLM with the given forward hooks."""

    def fn(input_ids: Tensor, pixel_values_: Tensor, attention_mask: Tensor) -> Tensor:
        inputs = dict(input_ids=input_ids, pixel_values=pixel_values_.to(model.dtype), attention_mask=attention_mask)
        return model.run_with_hooks(**inputs, fwd_hooks=fwd_hooks or [])

    return fn
