"""The toy LLaVA trained the LLaVA way: ``python -m hooked_vlm.toy.train --recipe llava [--out DIR]``.

Same model, tokenizer and processor as the shipped recipe (:mod:`hooked_vlm.toy.train`); the stages
follow how LLaVA is built (fixed seed, CPU; measured time in docs/toy_models.md):

0. **vision**: the tower alone learns what is where (the shipped recipe's stage 1,
   :func:`~hooked_vlm.toy.train.pretrain_vision`), standing in for a pretrained CLIP tower.
1. **text** (a): the LM (embeddings, blocks, final norm, unembedding) is pretrained on text alone,
   with the next-token loss on every token: captions (``a red square in the top left``) and
   question / answer text about the same colours, shapes and positions, the scene given as a
   caption where the image will later be (``user : a red square in the top left . what colour is
   the shape ? assistant : red``). No images; the tower and projector get no gradient.
2. **align** (b): projector alignment on captions (``describe the image .`` -> caption, loss on the
   caption tokens); the LM and the tower are frozen, only the projector learns.
3. **instruct** (c): instruction tuning of projector + LM on every question kind (the shipped
   recipe's question-answering stage, :func:`~hooked_vlm.toy.train.train_qa`), tower frozen.

The LM never sees an image before stage (b), so whatever it reads from the image tokens it reads
with the words it learned from text.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import QUESTIONS, ToyScene, make_scene
from .tasks import ToyEncoder, answer_loss
from .train import DEFAULTS as FAST_DEFAULTS
from .train import build_model, build_processor, cli, evaluate_and_save, make_optimizer, optimise_step, pretrain_vision, train_qa

DEFAULTS = dict(FAST_DEFAULTS, text_steps=600, text_batch=64, text_lr=2e-3, align_steps=300, align_batch_scenes=32,
                align_lr=2e-3, tower_from="", held_out_n=1000)
TEXT_KINDS = ("caption",) + tuple(QUESTIONS)  # a bare caption, then QA with the scene as a caption in context


def text_sequence(scene: ToyScene, kind: str) -> str:
    """One text-only training sequence about ``scene``: ``kind="caption"`` is the bare caption; a question
    kind puts the caption where the image goes in the image prompt and asks that question."""
    caption = scene.answer("caption")
    if kind == "caption":
        return caption
    return f"user : {caption} . {QUESTIONS[kind]} assistant : {scene.answer(kind)}"


def text_batch(tokenizer: Any, scenes: list[ToyScene], kinds: tuple[str, ...] = TEXT_KINDS) -> dict[str, Tensor]:
    """Every scene as every text kind: input_ids / attention_mask (BOS first, EOS last, right-padded)."""
    seqs = [tokenizer(text_sequence(s, k))["input_ids"] + [tokenizer.eos_token_id] for s in scenes for k in kinds]
    length = max(map(len, seqs))
    ids = torch.full((len(seqs), length), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), length, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return dict(input_ids=ids, attention_mask=mask)


def lm_loss(logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """Next-token cross-entropy over every non-pad target."""
    targets = batch["input_ids"][:, 1:]
    keep = batch["attention_mask"][:, 1:].bool()
    return torch.nn.functional.cross_entropy(logits[:, :-1][keep].float(), targets[keep])


def set_trainable(model: Any, *prefixes: str) -> None:
    """Only parameters whose name starts with one of ``prefixes`` get gradients."""
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes))


def run_stage(model: Any, opts: dict, steps: int, lr: float, desc: str, next_loss) -> None:
    """``steps`` AdamW steps (warmup + cosine, clipping at 1) over the currently trainable parameters."""
    from tqdm import tqdm

    if steps <= 0:
        return
    optim, sched, trainable = make_optimizer(model, dict(opts, steps=steps, lr=lr))
    model.train()
    bar = tqdm(range(steps), desc=desc, mininterval=2.0)
    for step in bar:
        loss = next_loss()
        optimise_step(loss, optim, sched, trainable)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()


def pretrain_text(model: Any, processor: Any, opts: dict, rng: np.random.Generator) -> None:
    """Stage (a): the LM alone on text (next-token loss on every token); tower and projector untouched."""
    set_trainable(model, "model.language_model.", "lm_head.")
    tok = processor.tokenizer

    def next_loss() -> Tensor:
        b = text_batch(tok, [make_scene(rng) for _ in range(opts["text_batch"] // len(TEXT_KINDS))])
        return lm_loss(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b)

    run_stage(model, opts, opts["text_steps"], opts["text_lr"], "toy-llava (a) text", next_loss)


def align_projector(model: Any, processor: Any, opts: dict, rng: np.random.Generator) -> None:
    """Stage (b): image -> caption with the LM and the tower frozen; only the projector learns."""
    set_trainable(model, "model.multi_modal_projector.")
    enc = ToyEncoder(processor)

    def next_loss() -> Tensor:
        b = enc.batch([make_scene(rng) for _ in range(opts["align_batch_scenes"])], ("caption",))
        logits = model(input_ids=b["input_ids"], pixel_values=b["pixel_values"], attention_mask=b["attention_mask"]).logits
        return answer_loss(logits, b)

    run_stage(model, opts, opts["align_steps"], opts["align_lr"], "toy-llava (b) align", next_loss)


def instruct(model: Any, processor: Any, opts: dict, rng: np.random.Generator) -> None:
    """Stage (c): projector + LM on every question kind (tower frozen: ``tower_lr_scale`` 0)."""
    set_trainable(model, "model.multi_modal_projector.", "model.language_model.", "lm_head.")
    train_qa(model, processor, dict(opts, tower_lr_scale=0.0), rng)


def train(opts: dict, out: Path | None, threads: int = 2) -> tuple[Any, Any, dict]:
    """Stages 0, (a), (b), (c) from a fixed seed; saves model, processor and ``toy_training.json`` to ``out``."""
    torch.set_num_threads(threads)
    torch.manual_seed(opts["seed"])
    rng = np.random.default_rng(opts["seed"])
    processor = build_processor()
    model = build_model(opts, processor.tokenizer)
    seconds: dict[str, float] = {}
    start = time.time()
    if opts["tower_from"]:  # a tower trained before (the shipped toy-llava's stage 1 is this recipe's stage 0)
        probe = load_tower(model, Path(opts["tower_from"]))
    else:
        probe = pretrain_vision(model, opts, rng) if opts["vision_steps"] else None
    for name, stage in (("vision", None), ("text", pretrain_text), ("align", align_projector), ("instruct", instruct)):
        t = time.time()
        if stage is not None:
            stage(model, processor, opts, rng)
        seconds[name] = round(time.time() - (start if name == "vision" else t), 1)
    model.requires_grad_(True)
    info = dict(recipe="llava", options=opts, threads=threads, train_seconds=round(time.time() - start, 1),
                stage_seconds=seconds, vision_probe_held_out=probe)
    return model, processor, evaluate_and_save(model, processor, info, out, opts["held_out_n"])


def load_tower(model: Any, folder: Path) -> dict:
    """Copy the vision tower's weights from a saved toy LLaVA (same architecture) -> where they came from."""
    from safetensors.torch import load_file

    path = folder / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"--tower-from {folder}: no model.safetensors there; give a saved toy-llava folder")
    state = load_file(str(path))
    weights = {}
    for prefix in ("model.vision_tower.", "vision_tower."):  # saved names: current / legacy LLaVA layout
        weights = weights or {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"--tower-from {folder}: {path} holds no vision_tower.* weights")
    model.model.vision_tower.load_state_dict(weights, strict=True)
    return dict(tower_from=str(folder))


def main(argv: list[str] | None = None) -> None:
    cli(argv, __doc__, DEFAULTS, train, Path("out/toy-llava-recipe-llava"))


if __name__ == "__main__":
    main()
