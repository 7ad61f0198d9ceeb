"""Train the toy LLaVA shipped with the package: ``python -m hooked_vlm.toy.train [--out DIR]``.

A tiny ``LlavaForConditionalGeneration`` (1-layer CLIP tower on 48x48 images with 8 px patches ->
36 image tokens, 2-layer Llama LM) with a word-level tokenizer and a CLIP image processor combined
in a ``LlavaProcessor``. Trained on CPU with a fixed seed on fresh synthetic scenes every step
(loss on the answer tokens; every scene is asked every question kind), then saved with
``save_pretrained`` so that ``HookedVLM.from_pretrained("toy-llava")`` loads it like any checkpoint.

The shipped checkpoint is :data:`RECIPE` (``python -m hooked_vlm.toy.train --recipe``): five stages,
each continuing from the previous one with a fresh warmup + cosine schedule and new scenes. Shape
questions sit on a long plateau (~50%) that extra shape-bearing questions (stage 3) break.
One stage alone: ``python -m hooked_vlm.toy.train --steps 1500 --out DIR [--init PREVIOUS_DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import TOY_DIR
from .data import GRID, IMAGE_SIZE, PATCH_SIZE, SPECIAL_TOKENS, VOCAB, make_scene, make_scenes
from .tasks import ToyEncoder, accuracy, answer_loss

HELD_OUT_SEED = 12345
DEFAULTS = dict(steps=1500, batch_scenes=16, lr=2e-3, warmup=100, weight_decay=0.01, seed=0,
                kinds="colour,shape,position,caption", vision_layers=1, vision_hidden=64, vision_feature_layer=-1, lm_layers=2, lm_hidden=128)
#: the stages that made the shipped checkpoint (options that differ from DEFAULTS)
RECIPE = [
    dict(),
    dict(steps=1200, seed=1, warmup=50),
    dict(steps=1200, seed=2, warmup=50, batch_scenes=24, kinds="colour,shape,caption"),
    dict(steps=1500, seed=3, warmup=50, batch_scenes=32),
    dict(steps=1500, seed=4, warmup=50, batch_scenes=32, lr=1e-3),
]


def build_processor() -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
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


def train(opts: dict, out: Path | None, threads: int = 2, init: Path | tuple | None = None) -> tuple[Any, Any, dict]:
    """Train from scratch, or continue from ``init`` (a checkpoint folder, or (model, processor, info)
    of a previous stage; its architecture and processor are kept) with a fresh LR schedule."""
    from tqdm import tqdm
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    torch.set_num_threads(threads)
    torch.manual_seed(opts["seed"])
    rng = np.random.default_rng(opts["seed"])
    if isinstance(init, tuple):
        model, processor, previous = init
    elif init is not None:
        processor = AutoProcessor.from_pretrained(str(init))
        model = LlavaForConditionalGeneration.from_pretrained(str(init))
        previous = json.loads((init / "toy_training.json").read_text()) if (init / "toy_training.json").exists() else None
    else:
        processor = build_processor()
        model = build_model(opts, processor.tokenizer)
        previous = None
    enc = ToyEncoder(processor)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optim = torch.optim.AdamW([{"params": decay, "weight_decay": opts["weight_decay"]}, {"params": other, "weight_decay": 0.0}],
                              lr=opts["lr"], betas=(0.9, 0.98))
    steps, warmup = opts["steps"], opts["warmup"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    held_out = make_scenes(200, HELD_OUT_SEED)
    kinds = tuple(opts["kinds"].split(","))
    model.train()
    start = time.time()
    bar = tqdm(range(steps), desc="toy-llava", mininterval=2.0)
    for step in bar:
        batch = enc.batch([make_scene(rng) for _ in range(opts["batch_scenes"])], kinds)
        logits = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"]).logits
        loss = answer_loss(logits, batch)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % max(steps // 5, 1) == 0 or step + 1 == steps:
            model.eval()
            acc = accuracy(hf_logits_fn(model), enc, held_out[:100])
            model.train()
            bar.write(f"step {step + 1}: loss {loss.item():.4f} held-out " + " ".join(f"{k} {v:.0f}%" for k, v in acc.items()))
    model.eval()
    acc = accuracy(hf_logits_fn(model), enc, held_out)
    info = dict(options=opts, init=str(init) if isinstance(init, Path) else None, previous_stage=previous, train_seconds=round(time.time() - start, 1), threads=threads,
                held_out_accuracy={k: round(v, 2) for k, v in acc.items()}, held_out_seed=HELD_OUT_SEED, held_out_n=len(held_out))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        processor.save_pretrained(out)
        (out / "toy_training.json").write_text(json.dumps(info, indent=2) + "\n")
    return model, processor, info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=TOY_DIR / "toy-llava", help="where to save (default: the packaged checkpoint)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", type=Path, default=None, help="continue training from this checkpoint folder")
    ap.add_argument("--recipe", action="store_true", help="run every stage of RECIPE (the shipped checkpoint)")
    for k, v in DEFAULTS.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    args = ap.parse_args(argv)
    if args.recipe:
        state = None
        for i, stage in enumerate(RECIPE):
            last = i == len(RECIPE) - 1
            state = train(dict(DEFAULTS, **stage), args.out if last else None, args.threads, state)
        info = state[2]
    else:
        opts = {k: getattr(args, k) for k in DEFAULTS}
        _, _, info = train(opts, args.out, args.threads, args.init)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
