"""Tiny random Aya Vision and Cohere2 Vision checkpoints (Cohere2 LM) built from configs in code, with their batches.

LM (both): Cohere2, 4 layers (sliding, full, sliding, full: RoPE on interleaved pairs in the sliding layers, NoPE in the
full ones), window 8 (shorter than every prompt), GQA 4 / 2 heads, parallel attention + MLP, LayerNorm without bias,
tied embeddings (scaled up so that logits are of scale ~1), logit_scale 0.25 (which HF's VLM wrappers never apply).
Vision: SigLIP, 2 layers, width 32, 8 x 8 px tiles of 2 x 2 px patches (4 x 4 grid); pixel shuffle x2 -> 4 LM tokens per
tile; SwiGLU projector (Aya: LayerNorm first; Cohere2 Vision: none, and the tower read after post_layernorm).

Batches in each processor's layout: Aya's comes from HF's own AyaVisionProcessor (word tokenizer + the PIL GotOcr2
image processor, 1..4 crops + a thumbnail); Cohere2 Vision's image processor needs torchvision, so its batch is written
with the processor's template (``Cohere2VisionProcessor.replace_image_token``: per tile 4 x <|IMG_PATCH|> +
<|IMG_LINE_BREAK|>, between <|START_OF_IMG|> and <|END_OF_IMG|>) and random tiles.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests import tiny

VOCAB = tiny.VOCAB  # 120
PAD, BOS, EOS = 0, 1, 2
PATCH, BOI, EOI, LINE_BREAK, TILE_GLOBAL = 100, 101, 102, 103, 104  # <|IMG_PATCH|>, <|START_OF_IMG|>, ...
TILE_IDS = {f"TILE_{k}": 104 + k for k in range(1, 5)}  # TILE_1 .. TILE_4 = 105 .. 108
IMAGE = 109  # "<image>": Aya's placeholder in the text, replaced by the processor
TILE, TOKENS_PER_TILE = 8, 4
WINDOW = 8
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
LOGIT_SCALE = 0.25
SIZES = [(16, 8), (8, 8), (8, 24)]  # (height, width): 2 crops + thumbnail, 1 tile, 3 crops + thumbnail


def cohere2_text_config(**overrides: Any) -> dict:
    cfg = dict(model_type="cohere2", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, layer_norm_eps=1e-5,
               sliding_window=WINDOW, layer_types=list(LAYER_TYPES), logit_scale=LOGIT_SCALE, pad_token_id=PAD,
               bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=True,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cfg.update(overrides)
    return cfg


def cohere_text_config(**overrides: Any) -> dict:
    """Cohere (v1, Aya Vision 32B's LM): RoPE in every layer, no window, per-head LayerNorm q/k norms without bias."""
    cfg = cohere2_text_config(model_type="cohere", use_qk_norm=True)
    for key in ("sliding_window", "layer_types"):
        cfg.pop(key)
    cfg.update(overrides)
    return cfg


def siglip_vision_config(**overrides: Any) -> dict:
    cfg = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, image_size=TILE, patch_size=2, num_channels=3, vision_use_head=False)
    cfg.update(overrides)
    return cfg


def tokenizer() -> Any:
    """A WordLevel tokenizer with the Cohere image tokens as named special tokens (as Cohere2 Vision's tokenizer has
    boi_token / eoi_token / image_token / img_line_break_token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = {"<pad>": PAD, "<BOS_TOKEN>": BOS, "<|END_OF_TURN_TOKEN|>": EOS, "<unk>": 3, "<|IMG_PATCH|>": PATCH,
               "<|START_OF_IMG|>": BOI, "<|END_OF_IMG|>": EOI, "<|IMG_LINE_BREAK|>": LINE_BREAK,
               "TILE_GLOBAL": TILE_GLOBAL, "<image>": IMAGE, **TILE_IDS}
    tok = Tokenizer(models.WordLevel(vocab=tiny.word_vocab(special, VOCAB), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<BOS_TOKEN>", eos_token="<|END_OF_TURN_TOKEN|>", pad_token="<pad>",
        unk_token="<unk>", padding_side="left",
        extra_special_tokens={"image_token": "<|IMG_PATCH|>", "boi_token": "<|START_OF_IMG|>",
                              "eoi_token": "<|END_OF_IMG|>", "img_line_break_token": "<|IMG_LINE_BREAK|>",
                              "tile_global_token": "TILE_GLOBAL", "placeholder_token": "<image>"})


def aya_processor() -> Any:
    """HF's AyaVisionProcessor: the PIL GotOcr2 image processor (8 x 8 tiles, 1..4 crops + thumbnail) and the word
    tokenizer; (img_size / (patch_size * downsample_factor))**2 = 4 image tokens per tile."""
    from transformers import AyaVisionProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    image_processor = GotOcr2ImageProcessorPil(size={"height": TILE, "width": TILE}, crop_to_patches=True,
                                               min_patches=1, max_patches=4)
    return AyaVisionProcessor(image_processor=image_processor, tokenizer=tokenizer(), patch_size=2, img_size=TILE,
                              downsample_factor=2)


def _perturb_and_save(model: Any, prefix: str) -> Path:
    with torch.no_grad():  # norms at 1, biases at 0: perturb them; embeddings x 4: logits of scale ~1 (tied)
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "position_embedding" in name:  # q/k norm weights too
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith("embed_tokens.weight"):
                p.mul_(4.0)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    model.save_pretrained(folder)
    return folder


def make_aya(seed: int = 0, text: dict | None = None, vision: dict | None = None) -> tuple[Path, Any]:
    from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration

    torch.manual_seed(seed)
    config = AyaVisionConfig(text_config=text or cohere2_text_config(), vision_config=vision or siglip_vision_config(),
                             downsample_factor=2, adapter_layer_norm_eps=1e-6, image_token_index=PATCH,
                             alignment_intermediate_size=64)
    hf = AyaVisionForConditionalGeneration(config).eval()
    folder = _perturb_and_save(hf, "tiny_aya_")
    aya_processor().save_pretrained(folder)
    return folder, hf


def make_cohere2_vision(seed: int = 0, text: dict | None = None, vision: dict | None = None) -> tuple[Path, Any]:
    from transformers import Cohere2VisionConfig, Cohere2VisionForConditionalGeneration

    torch.manual_seed(seed)
    config = Cohere2VisionConfig(text_config=text or cohere2_text_config(),
                                 vision_config=vision or siglip_vision_config(), downsample_factor=2,
                                 image_token_id=PATCH, alignment_intermediate_size=64)
    hf = Cohere2VisionForConditionalGeneration(config).eval()
    folder = _perturb_and_save(hf, "tiny_cohere2_vision_")
    tokenizer().save_pretrained(folder)
    # the processor files a real checkpoint has: the image processor imports torchvision, so without it loading fails
    # (the model gets a stand-in that says why; marker ids still come from the tokenizer)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Cohere2VisionImageProcessor", "processor_class": "Cohere2VisionProcessor",
        "size": {"height": TILE, "width": TILE}, "patch_size": 2, "crop_to_patches": True, "max_patches": 4}))
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "Cohere2VisionProcessor"}))
    return folder, hf


def _words(n: int, seed: int) -> str:
    words = tiny.WORDS[2:]
    g = torch.Generator().manual_seed(seed)
    return " ".join(words[i] for i in torch.randint(0, len(words), (n,), generator=g).tolist())


def aya_batch(proc: Any, images: list[list[tuple[int, int]]], seed: int = 0, text_len: int = 6) -> dict:
    """The AyaVisionProcessor's output for "USER: words <image>... words ASSISTANT:" prompts, left padded."""
    rows, flat = [], []
    for i, sizes in enumerate(images):
        rows.append(f"USER: {_words(3, seed + i)} " + " ".join("<image>" for _ in sizes)
                    + f" {_words(text_len, seed + 50 + i)} ASSISTANT:")
        flat += [tiny.pil_image(seed + 10 * i + j, 24).resize((w, h)) for j, (h, w) in enumerate(sizes)]
    out = proc(images=flat, text=rows, return_tensors="pt")
    return dict(out)


def cohere2_vision_batch(tiles: list[list[int]], pad_left: list[int], seed: int = 0, text_len: int = 6) -> dict:
    """Cohere2VisionProcessor's layout: <BOS_TOKEN> words, per image <|START_OF_IMG|> + n x (4 x <|IMG_PATCH|> +
    <|IMG_LINE_BREAK|>) + <|END_OF_IMG|>, words; ``tiles[i]`` the tile counts of batch item i's images."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for counts in tiles:
        row = [BOS] + torch.randint(4, 90, (3,), generator=g).tolist()
        for n in counts:
            row += [BOI] + ([PATCH] * TOKENS_PER_TILE + [LINE_BREAK]) * n + [EOI]
        rows.append(row + torch.randint(4, 90, (text_len,), generator=g).tolist())
    input_ids, mask = tiny.pad_rows(rows, pad_left)
    pixel_values = torch.randn(sum(sum(c) for c in tiles), 3, TILE, TILE, generator=g)
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values)


@functools.lru_cache(maxsize=None)
def aya(lm: str = "cohere2") -> tiny.Built:
    """tests/test_parity.py's factory. Padded: item 0 one 16 x 8 image (2 crops + thumbnail), item 1 an 8 x 8 (1 tile)
    and an 8 x 24 image (3 crops + thumbnail). Unpadded: two items with one 8 x 8 image each. ``lm="cohere"``: Aya
    Vision 32B's kind of LM (cohere_text_config)."""
    folder, hf = make_aya(text=cohere_text_config() if lm == "cohere" else None)
    proc = aya_processor()
    return tiny.load(folder, hf, aya_batch(proc, [[SIZES[0]], [SIZES[1], SIZES[2]]]),
                     aya_batch(proc, [[SIZES[1]], [SIZES[1]]], seed=5))


@functools.lru_cache(maxsize=None)
def cohere2_vision() -> tiny.Built:
    """tests/test_parity.py's factory (loaded with the processor stand-in: a warning says torchvision is missing). Padded: item 0 one image of 3 tiles (2 crops + thumbnail), left pad 4; item 1
    images of 1 and 4 tiles. Unpadded: two items with one 1-tile image each."""
    folder, hf = make_cohere2_vision()
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the HF processor of .* could not be loaded")
        return tiny.load(folder, hf, cohere2_vision_batch([[3], [1, 4]], [4, 0]),
                     cohere2_vision_batch([[1], [1]], [0, 0], seed=1))
