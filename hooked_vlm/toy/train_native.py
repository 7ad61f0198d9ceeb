"""Train the toy native (Chameleon-style) model shipped with the package:
``python -m hooked_vlm.toy.train_native [--out DIR]``.

A tiny ``ChameleonForConditionalGeneration``: the image is cut by a VQ tokenizer (downsampling 8, so a
48x48 scene -> 6x6 = 36 codes, the toy LLaVA's grid) into code tokens ``IMGIMG..Z`` that live in the
LM vocabulary next to the toy words, wrapped in ``<racm3:break>`` (begin of image) and ``<eoss>`` (end
of image) by a ``ChameleonProcessor``. Two stages, CPU, fixed seed:

1. the VQ tokenizer (see :mod:`hooked_vlm.toy.vq_fit`): encoder trained as a patch autoencoder,
   codebook = weighted k-means of its latents; then frozen;
2. the LM (2-layer Chameleon decoder, qk-norm) on the toy questions, loss on the answer tokens
   (every fresh scene asked every question kind), optionally plus ``--image-loss`` x next-code loss
   on the image tokens (native models also model their images);
3. ``--objective ug`` (understanding + generation) adds ``gen_weight`` x the next-token loss on every
   image code and EOI, both in the question rows and in caption -> image rows
   (``<s> caption <racm3:break> codes <eoss>``); ``u`` (default) trains on the answers only. The
   same scenes, steps and seed either way (``python -m experiments.gate_experiment`` compares the two).

Saved with ``save_pretrained`` so that ``HookedVLM.from_pretrained("toy-chameleon")`` loads it through
the Chameleon converter like any checkpoint.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import TOY_DIR
from .data import GRID, IMAGE_SIZE, PATCH_SIZE, VOCAB, make_scene, make_scenes
from .tasks import ToyEncoder, answer_loss
from .train import HELD_OUT_SEED, cli, evaluate_and_save, train_answers, word_tokenizer
from .vq_fit import code_purity, encode, fit_codebook, train_encoder

BOI, EOI, SEP = "<racm3:break>", "<eoss>", "<reserved08706>"
DEFAULTS = dict(vq_steps=300, vq_batch=32, vq_lr=2e-3, n_codes=256, kmeans_scenes=2000, object_weight=5.0, probe_weight=0.0,
                steps=1500, batch_scenes=16, lr=2e-3, warmup=100, weight_decay=0.01, image_loss=0.0, seed=0,
                kinds="colour,shape,position,caption", lm_layers=2, lm_hidden=128, objective="u", gen_weight=1.0)
OBJECTIVES = ("u", "ug")
_LETTERS = "ABCDEFGHIJ"


def code_token(code: int) -> str:
    """VQ code -> its vocabulary entry, as Chameleon names them (digits spelled A-J): 12 -> IMGIMGBCZ."""
    return "IMGIMG" + "".join(_LETTERS[int(d)] for d in str(code)) + "Z"


def native_vocab(n_codes: int) -> dict[str, int]:
    """The toy words (ids as in the toy LLaVA), Chameleon's image markers and separator, then the codes."""
    names = VOCAB + [BOI, EOI, SEP] + [code_token(c) for c in range(n_codes)]
    return {n: i for i, n in enumerate(names)}


def build_processor(n_codes: int) -> Any:
    from transformers import ChameleonProcessor
    from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil

    tokenizer = word_tokenizer(native_vocab(n_codes), {"image_token": "<image>", "boi_token": BOI, "eoi_token": EOI}, sep_token=SEP)
    image_processor = ChameleonImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                                 crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return ChameleonProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=GRID * GRID)


def build_model(opts: dict, tokenizer: Any) -> Any:
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    h = opts["lm_hidden"]
    vq = dict(embed_dim=32, num_embeddings=opts["n_codes"], latent_channels=32, resolution=IMAGE_SIZE, base_channels=32,
              channel_multiplier=[1] * (int(math.log2(PATCH_SIZE)) + 1), num_res_blocks=0, attn_type="none")
    config = ChameleonConfig(vocab_size=len(native_vocab(opts["n_codes"])), hidden_size=h, intermediate_size=2 * h,
                             num_hidden_layers=opts["lm_layers"], num_attention_heads=4, num_key_value_heads=4,
                             max_position_embeddings=128, rms_norm_eps=1e-5, vocabulary_map=native_vocab(opts["n_codes"]),
                             pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False, vq_config=vq)
    return ChameleonForConditionalGeneration(config)


def fit_tokenizer(model: Any, enc: ToyEncoder, opts: dict, rng: np.random.Generator, purity_n: int = 500) -> dict:
    """Stage 1: train the VQ encoder, fit its codebook, freeze it. -> purity on ``purity_n`` held-out scenes."""
    from tqdm import tqdm

    vq = model.model.vqmodel
    def make_batch() -> tuple[torch.Tensor, list]:
        scenes = [make_scene(rng) for _ in range(opts["vq_batch"])]
        return enc.pixel_values([s.image for s in scenes]), scenes

    losses = train_encoder(vq, make_batch, opts["vq_steps"], opts["vq_lr"], opts["probe_weight"],
                           progress=lambda r: tqdm(r, desc="toy-chameleon VQ", mininterval=2.0))
    scenes = [make_scene(rng) for _ in range(opts["kmeans_scenes"])]
    fit_codebook(vq, scenes, enc.pixel_values([s.image for s in scenes]), opts["object_weight"], seed=opts["seed"])
    vq.requires_grad_(False)
    held_out = make_scenes(purity_n, HELD_OUT_SEED + 1)
    purity = code_purity(encode(vq, enc.pixel_values([s.image for s in held_out])), held_out)
    return dict(final_reconstruction_mse=round(float(np.mean(losses[-20:])), 5), **{k: round(v, 2) for k, v in purity.items()})


def generation_mask(ids: torch.Tensor, image_id: int, eoi_id: int, objective: str) -> torch.Tensor:
    """Positions trained to predict the next image token: those whose next token is a code (``image_id``
    placeholders) or EOI under ``objective="ug"``; none under ``"u"``. [rows, pos] bool."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES} ('u': answers only, 'ug': + image generation), got {objective!r}")
    if objective == "u":
        return torch.zeros_like(ids, dtype=torch.bool)
    nxt = torch.roll((ids == image_id) | (ids == eoi_id), -1, 1)
    nxt[:, -1] = False
    return nxt


def caption_image_rows(batch: dict, caption_kind: int, n_codes: int, ids: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption -> image examples, one per scene: ``<s> caption <racm3:break> [n_codes x image_id] <eoss>``
    (right-padded; the codes are spliced in by the caller), the caption read off the batch's caption
    answers. ``ids``: bos, boi, image, eoi, pad token ids. -> (input_ids, attention_mask)."""
    rows = []
    for r in torch.nonzero(batch["kind"] == caption_kind)[:, 0].tolist():
        caption = batch["targets"][r][batch["answer_mask"][r]][:-1]  # the answer without its end token
        rows.append(torch.cat([torch.tensor([ids["bos"]]), caption, torch.tensor([ids["boi"]] + [ids["image"]] * n_codes + [ids["eoi"]])]))
    out = torch.full((len(rows), max(len(x) for x in rows)), ids["pad"], dtype=torch.long)
    mask = torch.zeros_like(out)
    for i, x in enumerate(rows):
        out[i, : len(x)], mask[i, : len(x)] = x, 1
    return out, mask


def lm_step_loss(model: Any, batch: dict, n_kinds: int, image_loss: float, objective: str = "u", gen_weight: float = 1.0,
                 caption_kind: int | None = None) -> torch.Tensor:
    """Answer loss (+ image_loss x next-code loss) (+ under ``objective="ug"``, gen_weight x the next-token
    loss on the codes and EOI of the question rows and of caption -> image rows). The codes are spliced
    into input_ids directly (what the HF model does to its <image> placeholders), so each scene is
    VQ-encoded once, not per question."""
    cfg = model.config
    image_id, eoi_id = cfg.image_token_id, cfg.vocabulary_map[EOI]
    with torch.no_grad():
        codes = model.model.get_image_tokens(batch["pixel_values"][::n_kinds])  # [scene, 36] token ids
    ids = batch["input_ids"].clone()
    ids[ids == image_id] = codes.repeat_interleave(n_kinds, 0).reshape(-1).to(ids.dtype)
    hidden = model.model(input_ids=ids, attention_mask=batch["attention_mask"]).last_hidden_state
    logits = model.lm_head(hidden)  # raw: the HF head would set the code logits to the dtype minimum
    loss = answer_loss(logits, batch)
    nxt = torch.roll(ids, -1, 1)
    if image_loss > 0:
        is_code = torch.roll(batch["input_ids"] == image_id, -1, 1)  # positions whose next token is a code
        loss = loss + image_loss * torch.nn.functional.cross_entropy(logits[is_code], nxt[is_code])
    gen = generation_mask(batch["input_ids"], image_id, eoi_id, objective)
    if gen.any():
        if caption_kind is None:
            raise ValueError("objective 'ug' needs the 'caption' kind in --kinds (its answers are the caption -> image prompts)")
        special = dict(bos=cfg.bos_token_id, boi=cfg.vocabulary_map[BOI], image=image_id, eoi=eoi_id, pad=cfg.pad_token_id)
        g_ids, g_mask = caption_image_rows(batch, caption_kind, codes.shape[1], special)
        g_sel = generation_mask(g_ids, image_id, eoi_id, objective)
        g_ids[g_ids == image_id] = codes.reshape(-1).to(g_ids.dtype)
        g_logits = model.lm_head(model.model(input_ids=g_ids, attention_mask=g_mask).last_hidden_state)
        targets = torch.cat([nxt[gen], torch.roll(g_ids, -1, 1)[g_sel]])
        loss = loss + gen_weight * torch.nn.functional.cross_entropy(torch.cat([logits[gen], g_logits[g_sel]]).float(), targets)
    return loss


def train(opts: dict, out: Path | None, threads: int = 2, held_out_n: int = 1000) -> tuple[Any, Any, dict]:
    torch.set_num_threads(threads)
    torch.manual_seed(opts["seed"])
    rng = np.random.default_rng(opts["seed"])
    start = time.time()
    processor = build_processor(opts["n_codes"])
    model = build_model(opts, processor.tokenizer)
    enc = ToyEncoder(processor)
    tokenizer_info = fit_tokenizer(model, enc, opts, rng, min(500, held_out_n))
    vq_seconds = time.time() - start

    kinds = opts["kinds"].split(",")
    caption_kind = kinds.index("caption") if "caption" in kinds else None
    step_loss = lambda batch: lm_step_loss(model, batch, len(kinds), opts["image_loss"], opts["objective"], opts["gen_weight"],
                                           caption_kind)
    train_answers(model, enc, opts, rng, step_loss,
                  "toy-chameleon LM", n_evals=5)
    info = dict(options=opts, train_seconds=round(time.time() - start, 1), vq_seconds=round(vq_seconds, 1), threads=threads,
                tokenizer=tokenizer_info)
    return model, processor, evaluate_and_save(model, processor, info, out, held_out_n)


def main(argv: list[str] | None = None) -> None:
    cli(argv, __doc__, DEFAULTS, train, TOY_DIR / "toy-chameleon")


if __name__ == "__main__":
    main()
