"""Train the toy LLaVA shipped with the package: ``python -m hooked_vlm.toy.train [--out DIR]``.

A tiny ``LlavaForConditionalGeneration`` (1-layer CLIP tower on 48x48 images with 8 px patches ->
36 image tokens, 2-layer Llama LM) with a word-level tokenizer and a CLIP image processor combined
in a ``LlavaProcessor``, trained in two stages on fresh synthetic scenes (CPU, fixed seed, a few
minutes on 2 cores), the way LLaVA is built on a pretrained vision encoder:

1. **vision**: the tower alone learns what is where. Two throw-away linear heads read the tower's
   output (the layer LLaVA feeds to the projector): each patch's colour (or background), and the
   object's shape from the mean over the object's patches. Both targets live at the object's
   patches, which keeps the information there (what the object-ablation effect needs) and
   skips the long shape plateau that training through the LM alone sits on.
2. **qa**: the tower is frozen (``tower_lr_scale=0``); projector and LM learn to answer every
   question kind about every scene (loss on the answer tokens).

The result is saved with ``save_pretrained`` so ``HookedVLM.from_pretrained("toy-llava")`` loads it
like any checkpoint; ``toy_training.json`` beside it records the options, time and accuracies.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from . import TOY_DIR
from .data import COLOURS, GRID, IMAGE_SIZE, PATCH_SIZE, SHAPES, VOCAB, ToyScene, make_scene, make_scenes, pixel_values
from .tasks import ToyEncoder, accuracy, answer_loss

HELD_OUT_SEED = 12345
DEFAULTS = dict(vision_steps=1000, vision_batch=64, vision_lr=3e-3, steps=800, batch_scenes=16, lr=2e-3, tower_lr_scale=0.0,
                warmup=50, weight_decay=0.01, seed=0, kinds="colour,shape,position,caption", vision_layers=1, vision_hidden=128,
                vision_feature_layer=-1, lm_layers=2, lm_hidden=128)


def word_tokenizer(vocab: dict[str, int], extra_special: dict[str, str], **tokens: str) -> Any:
    """A word-level tokenizer over ``vocab`` (lower-cased, split on whitespace and punctuation, BOS first);
    ``extra_special`` names the model's special tokens (``{"image_token": "<image>", ...}``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", extra_special_tokens=extra_special, **tokens)
    tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special.values())})
    return tokenizer


def build_processor() -> Any:
    from transformers import CLIPImageProcessor, LlavaProcessor

    tokenizer = word_tokenizer({w: i for i, w in enumerate(VOCAB)}, {"image_token": "<image>"})
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token="<image>")


def build_model(opts: dict, tokenizer: Any) -> Any:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    text = dict(model_type="llama", vocab_size=len(VOCAB), hidden_size=opts["lm_hidden"], intermediate_size=2 * opts["lm_hidden"],
                num_hidden_layers=opts["lm_layers"], num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                rms_norm_eps=1e-5, tie_word_embeddings=False)
    vision = dict(model_type="clip_vision_model", hidden_size=opts["vision_hidden"], intermediate_size=2 * opts["vision_hidden"],
                  num_hidden_layers=opts["vision_layers"], num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                  num_channels=3, projection_dim=opts["vision_hidden"])
    config = LlavaConfig(text_config=text, vision_config=vision, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=opts["vision_feature_layer"], vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", image_seq_length=GRID * GRID, tie_word_embeddings=False)
    return LlavaForConditionalGeneration(config)


def hf_logits_fn(model: Any):
    return lambda ids, pv, mask: model(input_ids=ids, pixel_values=pv, attention_mask=mask).logits


def make_optimizer(model: Any, opts: dict, lr_scale: Callable[[str], float] = lambda name: 1.0
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, list[Tensor]]:
    """AdamW over the trainable parameters (no weight decay on embeddings, norms and biases; learning
    rate ``opts["lr"] * lr_scale(name)``), linear warmup then cosine decay to 0 at ``opts["steps"]``.
    -> (optimizer, scheduler, the trained parameters)."""
    groups: dict[tuple[float, bool], dict] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (opts["lr"] * lr_scale(name), p.ndim >= 2 and "embed" not in name)
            groups.setdefault(key, dict(params=[], lr=key[0], weight_decay=opts["weight_decay"] if key[1] else 0.0))["params"].append(p)
    optim = torch.optim.AdamW(list(groups.values()), betas=(0.9, 0.98))
    return optim, cosine_schedule(optim, opts["steps"], opts["warmup"]), [p for g in groups.values() for p in g["params"]]


def cosine_schedule(optim: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup, then cosine decay to 0 at ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


class VisionProbe(torch.nn.Module):
    """The stage-1 heads on the tower's output: per-patch colour (+ background) and pooled object shape."""

    def __init__(self, d: int):
        super().__init__()
        self.colour = torch.nn.Linear(d, len(COLOURS) + 1)
        self.shape = torch.nn.Linear(d, len(SHAPES))

    def forward(self, feats: Float[Tensor, "n patch d"], scenes: list[ToyScene]) -> tuple[Tensor, dict[str, float]]:
        colour = torch.full((len(scenes), GRID * GRID), len(COLOURS))  # background class
        obj = torch.zeros(len(scenes), GRID * GRID)
        for i, s in enumerate(scenes):
            patches = s.object_patches(0)
            colour[i, patches] = list(COLOURS).index(s.objects[0].colour)
            obj[i, patches] = 1.0
        shape = torch.tensor([SHAPES.index(s.objects[0].shape) for s in scenes])
        colour_logits = self.colour(feats)  # [n, patch, colours + 1]
        pooled = (feats * obj[..., None]).sum(1) / obj.sum(1, keepdim=True)  # [n, d]
        shape_logits = self.shape(pooled)  # [n, shapes]
        loss = (torch.nn.functional.cross_entropy(colour_logits.flatten(0, 1), colour.flatten())
                + torch.nn.functional.cross_entropy(shape_logits, shape))
        acc = dict(patch_colour=100.0 * (colour_logits.argmax(-1) == colour).float().mean().item(),
                   shape=100.0 * (shape_logits.argmax(-1) == shape).float().mean().item())
        return loss, acc


def tower_features(model: Any, pixels: Float[Tensor, "n 3 h w"]) -> Float[Tensor, "n patch d"]:
    """The tower's hidden state that LLaVA's projector reads (``vision_feature_layer``), CLS dropped."""
    out = model.model.vision_tower(pixels, output_hidden_states=True)
    return out.hidden_states[model.config.vision_feature_layer][:, 1:]


def pretrain_vision(model: Any, opts: dict, rng: np.random.Generator) -> dict[str, float]:
    """Stage 1: train the tower with :class:`VisionProbe` on fresh scenes; returns held-out probe accuracy."""
    from tqdm import tqdm

    tower = model.model.vision_tower
    probe = VisionProbe(model.config.vision_config.hidden_size)
    params = list(tower.parameters()) + list(probe.parameters())
    optim = torch.optim.AdamW(params, lr=opts["vision_lr"], weight_decay=opts["weight_decay"])
    sched = cosine_schedule(optim, opts["vision_steps"], opts["warmup"])
    tower.train()
    bar = tqdm(range(opts["vision_steps"]), desc="toy-llava vision", mininterval=2.0)
    for step in bar:
        scenes = [make_scene(rng) for _ in range(opts["vision_batch"])]
        loss, acc = probe(tower_features(model, pixel_values([s.image for s in scenes])), scenes)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", shape=f"{acc['shape']:.0f}%")
    tower.eval()
    held_out = make_scenes(500, HELD_OUT_SEED + 1)
    with torch.no_grad():
        _, acc = probe(tower_features(model, pixel_values([s.image for s in held_out])), held_out)
    return {k: round(v, 2) for k, v in acc.items()}


def train_qa(model: Any, processor: Any, opts: dict, rng: np.random.Generator) -> None:
    """Stage 2: every question kind about every scene, loss on the answer tokens; the tower's learning
    rate is ``lr * tower_lr_scale`` (0: frozen, as in LLaVA)."""
    scale = opts["tower_lr_scale"]
    model.model.vision_tower.requires_grad_(scale > 0)

    def loss_fn(batch: dict[str, Tensor]) -> Tensor:
        logits = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"]).logits
        return answer_loss(logits, batch)

    train_answers(model, ToyEncoder(processor), opts, rng, loss_fn, "toy-llava qa", n_evals=4,
                  lr_scale=lambda name: scale if name.startswith("model.vision_tower.") else 1.0)


def optimise_step(loss: Tensor, optim: Any, sched: Any, trainable: list) -> None:
    """One AdamW step of the toy recipes: backward, gradient clipping at 1, optimizer and schedule steps."""
    optim.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optim.step()
    sched.step()


def train_answers(model: Any, enc: ToyEncoder, opts: dict, rng: np.random.Generator, loss_fn: Callable[[dict], Tensor],
                  desc: str, n_evals: int, lr_scale: Callable[[str], float] = lambda name: 1.0) -> None:
    """The question-answering loop both toy models share: ``opts["steps"]`` batches of
    ``opts["batch_scenes"]`` fresh scenes x every kind in ``opts["kinds"]``, AdamW (:func:`make_optimizer`),
    gradient clipping at 1, and ``n_evals - 1`` progress reports on 100 held-out scenes."""
    from tqdm import tqdm

    optim, sched, trainable = make_optimizer(model, opts, lr_scale)
    held_out = make_scenes(100, HELD_OUT_SEED)
    kinds = tuple(opts["kinds"].split(","))
    model.train()
    bar = tqdm(range(opts["steps"]), desc=desc, mininterval=2.0)
    for step in bar:
        loss = loss_fn(enc.batch([make_scene(rng) for _ in range(opts["batch_scenes"])], kinds))
        optimise_step(loss, optim, sched, trainable)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % max(opts["steps"] // n_evals, 1) == 0 and step + 1 < opts["steps"]:
            model.eval()
            acc = accuracy(hf_logits_fn(model), enc, held_out)
            model.train()
            bar.write(f"step {step + 1}: loss {loss.item():.4f} held-out " + " ".join(f"{k} {v:.0f}%" for k, v in acc.items()))
    model.eval()


def train(opts: dict, out: Path | None, threads: int = 2) -> tuple[Any, Any, dict]:
    """Both stages from a fixed seed; saves model, processor and ``toy_training.json`` to ``out``."""
    torch.set_num_threads(threads)
    torch.manual_seed(opts["seed"])
    rng = np.random.default_rng(opts["seed"])
    processor = build_processor()
    model = build_model(opts, processor.tokenizer)
    start = time.time()
    probe = pretrain_vision(model, opts, rng) if opts["vision_steps"] else None
    vision_seconds = time.time() - start
    train_qa(model, processor, opts, rng)
    info = dict(options=opts, threads=threads, train_seconds=round(time.time() - start, 1),
                vision_seconds=round(vision_seconds, 1), vision_probe_held_out=probe)
    return model, processor, evaluate_and_save(model, processor, info, out)


def evaluate_and_save(model: Any, processor: Any, info: dict, out: Path | None, held_out_n: int = 1000) -> dict:
    """Adds held-out accuracy (``held_out_n`` scenes) to ``info``; saves model, processor and ``toy_training.json``."""
    held_out = make_scenes(held_out_n, HELD_OUT_SEED)
    acc = accuracy(hf_logits_fn(model), ToyEncoder(processor), held_out)
    info = dict(info, held_out_accuracy={k: round(v, 2) for k, v in acc.items()}, held_out_seed=HELD_OUT_SEED,
                held_out_n=len(held_out), torch=torch.__version__)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        (out / "toy_training.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def cli(argv: list[str] | None, doc: str, defaults: dict, train_fn: Callable[..., tuple], default_out: Path) -> None:
    """``--out``, ``--threads`` and one ``--option`` per entry of ``defaults``; trains and prints the info."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--out", type=Path, default=default_out, help="where to save (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2)
    for k, v in defaults.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    args = ap.parse_args(argv)
    _, _, info = train_fn({k: getattr(args, k) for k in defaults}, args.out, args.threads)
    print(json.dumps(info, indent=2))


def main(argv: list[str] | None = None) -> None:
    """``--recipe fast`` (default: the shipped checkpoint's recipe, above) or ``--recipe llava``
    (:mod:`hooked_vlm.toy.recipe_llava`: text-pretrained LM, projector alignment, instruction tuning)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", choices=("fast", "llava"), default="fast")
    known, rest = pre.parse_known_args(argv)
    if known.recipe == "llava":
        from .recipe_llava import main as llava_main

        return llava_main(rest)
    cli(rest, __doc__, DEFAULTS, train, TOY_DIR / "toy-llava")


if __name__ == "__main__":
    main()
