"""Tiny Llama 4 language model (HF ``Llama4ForCausalLM``, fp32, random) and our HookedVLM built from its weights.

Two cached factories shared by the Llama 4 tests: ``llama4_lm()`` (this LM) and ``llama4_vlm()`` (below). Every
Llama 4 LM part is on: chunked local attention on the RoPE layers (chunk 8 < the prompts' length), NoPE full-attention
layers with temperature tuning (floor_scale 4, so the factor changes inside the prompt), L2 q/k norm, MoE layers
(every second) with a shared expert and top-2 sigmoid routing on the expert input, dense layers of another width, GQA.

Tiny Llama4ForConditionalGeneration: the LM above (vocabulary 120, every Llama 4 LM part, chunk 8) with the Llama 4
vision tower: 2 layers, width 32, 4 heads of 8 (2-D RoPE on 2 + 2 pairs), 8 x 8 px tiles of 2 x 2 px patches (a 4 x 4
grid + the class token), pixel shuffle x2 -> 4 LM tokens per tile, adapter 128 -> 48 -> 48, projector 48 -> 32.

Batches in Llama4Processor's layout: its image processor imports torchvision, so the prompt is written with the
processor's own template (``Llama4Processor._prompt_split_image``) and the tiles are random (the tower sees them as
they are). Padded: item 0 one image of 1 x 2 tiles (+ the global tile: 3 tiles), left pad 9; item 1 a 1 x 1 image (1
tile) and a 2 x 1 image (3 tiles); every prompt is longer than the chunk (27 and 36 tokens) with images crossing chunk
boundaries. Unpadded: two items with one 1 x 1 image each.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from converters._llama4_text import TEXT_TRANSFORMS, llama4_text_config, llama4_text_rules
from converters.base import KeyMap
from hooked_vlm import HookedVLM
from hooked_vlm.config import HookedVLMConfig

CHUNK = 8
TEXT = dict(vocab_size=96, hidden_size=32, intermediate_size=24, intermediate_size_mlp=40, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
            num_local_experts=4, num_experts_per_tok=2, interleave_moe_layer_step=2, no_rope_layer_interval=2,
            attention_chunk_size=CHUNK, floor_scale=4, attn_scale=1.0, use_qk_norm=True, attn_temperature_tuning=True,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 500.0})


@dataclass
class Built:
    hf: Any
    model: HookedVLM
    inputs: dict  # a left-padded batch longer than the attention chunk (tests/test_hooks.py runs it)


def load_from_hf(hf: Any, cfg: HookedVLMConfig) -> HookedVLM:
    """Our model with the HF model's weights, through the converter's key rules and layout transforms."""
    keymap = KeyMap(rules=llama4_text_rules("model"), transforms=TEXT_TRANSFORMS)
    model = HookedVLM(cfg).eval()
    ours = dict(model.state_dict())
    filled = set()
    with torch.no_grad():
        for key, tensor in hf.state_dict().items():
            target = keymap.target(key)
            fn = keymap.transform(target)
            ours[target].copy_(fn(tensor) if fn is not None else tensor)
            filled.add(target)
    missing = {k for k in ours if k not in filled and not k.endswith("rotary.inv_freq")}
    if missing - {"unembed.weight"} and not cfg.tie_word_embeddings:
        raise AssertionError(f"parameters not filled from the HF model: {sorted(missing)}")
    return model


def make(text: dict | None = None, seed: int = 0) -> Built:
    from transformers import Llama4TextConfig, Llama4ForCausalLM

    torch.manual_seed(seed)
    tc = Llama4TextConfig(**{**TEXT, **(text or {})})
    hf = Llama4ForCausalLM(tc).eval()
    with torch.no_grad():  # HF initialises the norms to 1 and the experts small: spread them so every part matters
        for name, p in hf.named_parameters():
            if name.endswith("layernorm.weight") or name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif "experts" in name:
                p.normal_(0, 0.2)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):  # sharper patterns: the temperature shows
                p.normal_(0, 0.3)
    cfg = HookedVLMConfig(architecture="Llama4ForCausalLM", text=llama4_text_config(tc), d_vocab=tc.vocab_size,
                          tie_word_embeddings=bool(tc.tie_word_embeddings))
    ids, mask = padded_batch()
    return Built(hf, load_from_hf(hf, cfg), {"input_ids": ids, "attention_mask": mask})


@functools.lru_cache(maxsize=None)
def llama4_lm() -> Built:
    return make()


def padded_batch(seed: int = 1, length: int = 21, pads: tuple[int, ...] = (0, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids / attention_mask of len(pads) rows, row i left-padded by pads[i]; length > CHUNK (several chunks)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, TEXT["vocab_size"], (len(pads), length), generator=g)
    mask = torch.ones_like(ids)
    for i, p in enumerate(pads):
        ids[i, :p], mask[i, :p] = TEXT["pad_token_id"], 0
    return ids, mask


# ---------------------------------------------------------------- the VLM (Llama4ForConditionalGeneration)
VLM_VOCAB = 120
PATCH, IMAGE_START, IMAGE_END, TILE_X, TILE_Y, IMAGE = 100, 101, 102, 103, 104, 105
SPECIAL = {"<|patch|>": PATCH, "<|image_start|>": IMAGE_START, "<|image_end|>": IMAGE_END,
           "<|tile_x_separator|>": TILE_X, "<|tile_y_separator|>": TILE_Y, "<|image|>": IMAGE}
TILE, TOKENS_PER_TILE = 8, 4
VISION = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vision_output_dim=48,
              image_size=TILE, patch_size=2, pixel_shuffle_ratio=0.5, projector_input_dim=48, projector_output_dim=48,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def vlm_tokenizer() -> Any:
    from tests import tiny
    from tests.tiny_native import word_tokenizer

    special = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **SPECIAL}
    return word_tokenizer(tiny.word_vocab(special, VLM_VOCAB), list(SPECIAL))


def make_vlm(seed: int = 0, text: dict | None = None, vision: dict | None = None) -> tuple[Any, Any]:
    """(folder, hf) of a tiny random Llama4ForConditionalGeneration saved with its tokenizer (and the processor files a
    real checkpoint has, which need torchvision to load)."""
    import json
    import tempfile
    from pathlib import Path

    from transformers import Llama4Config, Llama4ForConditionalGeneration

    torch.manual_seed(seed)
    config = Llama4Config(text_config={**TEXT, "vocab_size": VLM_VOCAB, **(text or {})},
                          vision_config={**VISION, **(vision or {})}, image_token_index=PATCH,
                          boi_token_index=IMAGE_START, eoi_token_index=IMAGE_END)
    hf = Llama4ForConditionalGeneration(config).eval()
    with torch.no_grad():  # norms at 1 / biases at 0 and small experts: spread them so every part matters
        for name, p in hf.named_parameters():
            if name.endswith(("layernorm.weight", "norm.weight", "layernorm_pre.weight", "layernorm_post.weight")):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
            elif "experts" in name:
                p.normal_(0, 0.2)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):  # sharper patterns: RoPE and chunks show
                p.normal_(0, 0.3 if name.startswith("language_model") else 0.2)
            elif name.endswith("embed_tokens.weight"):
                p.mul_(20.0)  # image and text embeddings of comparable scale; logits of scale ~1
    folder = Path(tempfile.mkdtemp(prefix="tiny_llama4_"))
    hf.save_pretrained(folder)
    vlm_tokenizer().save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Llama4ImageProcessor", "processor_class": "Llama4Processor",
        "size": {"height": TILE, "width": TILE}, "max_patches": 4}))
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "Llama4Processor", "patch_size": 2}))
    return folder, hf


def image_tokens(aspect: tuple[int, int], per_tile: int = TOKENS_PER_TILE) -> list[int]:
    """The token ids Llama4Processor writes for an image cut into ``aspect`` = (rows, cols) tiles (its own template)."""
    import re

    from transformers.models.llama4.processing_llama4 import Llama4Processor

    text = Llama4Processor._prompt_split_image(None, aspect, per_tile)
    return [SPECIAL[t] for t in re.findall(r"<\|[a-z_]+\|>", text)]


def n_tiles(aspect: tuple[int, int]) -> int:
    return aspect[0] * aspect[1] + (aspect[0] * aspect[1] > 1)  # the global tile when there is more than one


def vlm_batch(images: list[list[tuple[int, int]]], pad_left: list[int], seed: int = 0, text_len: int = 6,
              between: int = 2, tile: int = TILE, per_tile: int = TOKENS_PER_TILE) -> dict:
    """input_ids / attention_mask / pixel_values: item i = <s>, 3 words, then per image its tokens and ``between``
    words, then ``text_len`` words; ``images[i]`` the (rows, cols) tile grids of item i's images; tiles of ``tile``
    px giving ``per_tile`` LM tokens each."""
    from tests import tiny

    g = torch.Generator().manual_seed(seed)
    rows = []
    for aspects in images:
        row = [1] + torch.randint(4, 90, (3,), generator=g).tolist()
        for k, aspect in enumerate(aspects):
            row += image_tokens(aspect, per_tile) + (torch.randint(4, 90, (between,), generator=g).tolist()
                                           if k < len(aspects) - 1 else [])
        rows.append(row + torch.randint(4, 90, (text_len,), generator=g).tolist())
    input_ids, mask = tiny.pad_rows(rows, pad_left)
    tiles = sum(n_tiles(a) for aspects in images for a in aspects)
    pixel_values = torch.randn(tiles, 3, tile, tile, generator=g)
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values)


@functools.lru_cache(maxsize=None)
def llama4_vlm() -> Any:
    """tests/test_parity.py's factory (loaded with the processor stand-in: the image processor needs torchvision;
    the marker ids come from the tokenizer)."""
    import warnings

    from tests import tiny

    folder, hf = make_vlm()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the HF processor of .* could not be loaded")
        return tiny.load(folder, hf, vlm_batch([[(1, 2)], [(1, 1), (2, 1)]], [9, 0]),
                         vlm_batch([[(1, 1)], [(1, 1)]], [0, 0], seed=1))
