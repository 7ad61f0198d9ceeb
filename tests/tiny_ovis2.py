"""Tiny random Ovis2ForConditionalGeneration checkpoints (+ HF's Ovis2Processor, built offline) from configs in code.

Vision: the AIMv2-style ViT, 3 layers, width 16, 2 heads, SwiGLU, RMS norms, biased q/k/v/out and MLP, 8 x 8 px
crops of 2 x 2 px patches (4 x 4 grid); visual tokenizer: hidden_stride 2 -> 4 LM tokens per crop, 24 visual words
+ 5 indicator rows in the table. LM: Qwen2 (GQA, q/k/v biases), 3 layers, tied embeddings (Ovis2Config's default).
Norms, biases, positions and the table are perturbed / random. The batches come from HF's Ovis2Processor (PIL image
processor, crop_to_patches, 1..4 crops + a thumbnail first) with a WordLevel tokenizer, left padded.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests import tiny
from tests.tiny_internvl import prompts  # the same random word prompts

VOCAB = tiny.VOCAB  # 120
PAD, BOS, EOS = 0, 1, 2
IMAGE_TOKEN, START, GRID, COL, ROW, END, PLACEHOLDER = 100, 101, 102, 103, 104, 105, 106
MARKERS = {"<IMG_ATOM>": IMAGE_TOKEN, "<IMG_START>": START, "<IMG_GRID>": GRID, "<IMG_COL>": COL, "<IMG_ROW>": ROW,
           "<IMG_END>": END, "<image>": PLACEHOLDER}
MARKERS_IDS = (START, GRID, COL, ROW, END)  # visual_indicator_token_ids, in HF's order
CROP = 8  # pixels per crop side
TOKENS_PER_CROP = 4
# (height, width): 8 x 16 -> 1 x 2 grid + thumbnail; 8 x 8 -> one crop; 16 x 24 -> 2 x 2 grid + thumbnail (what HF's
# covering-area rule picks for these sizes)
SIZES = [(8, 16), (8, 8), (16, 24)]


def text_config(**overrides: Any) -> dict:
    cfg = dict(model_type="qwen2", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
               pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cfg.update(overrides)
    return cfg


def vision_config(**overrides: Any) -> dict:
    cfg = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=2, image_size=CROP,
               patch_size=2, rms_norm_eps=1e-5, qkv_bias=True, mlp_bias=True, hidden_act="silu", vocab_size=29,
               hidden_stride=2, num_visual_indicator_tokens=5, tokenize_function="softmax")
    cfg.update(overrides)
    return cfg


def tokenizer() -> Any:
    """A WordLevel tokenizer over VOCAB ids with Ovis 2's image tokens as special tokens; left padding."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": 3, **MARKERS}
    tok = Tokenizer(models.WordLevel(vocab=tiny.word_vocab(special, VOCAB), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", padding_side="left", extra_special_tokens={"image_token": "<IMG_ATOM>"})
    out.add_special_tokens({"additional_special_tokens": [t for t in MARKERS if t != "<IMG_ATOM>"]})
    return out


def processor() -> Any:
    """HF's Ovis2Processor: the PIL image processor (8 x 8 crops, 1..4 crops + thumbnail) and the word tokenizer."""
    from transformers import Ovis2Processor
    from transformers.models.ovis2.image_processing_pil_ovis2 import Ovis2ImageProcessorPil

    image_processor = Ovis2ImageProcessorPil(size={"height": CROP, "width": CROP}, crop_to_patches=True,
                                             min_patches=1, max_patches=4)
    return Ovis2Processor(image_processor=image_processor, tokenizer=tokenizer(), image_seq_length=TOKENS_PER_CROP)


def make_ovis2(folder: Path | None = None, seed: int = 0, text: dict | None = None, vision: dict | None = None,
               **top: Any) -> tuple[Path, Any]:
    """Save a tiny random Ovis2ForConditionalGeneration and its processor; returns (folder, hf model in eval)."""
    from transformers import Ovis2Config, Ovis2ForConditionalGeneration

    torch.manual_seed(seed)
    tc = text or text_config()
    kwargs = dict(text_config=tc, vision_config=vision or vision_config(), image_token_id=IMAGE_TOKEN,
                  visual_indicator_token_ids=list(MARKERS_IDS), vocab_size=tc["vocab_size"],
                  hidden_size=tc["hidden_size"])
    kwargs.update(top)
    model = Ovis2ForConditionalGeneration(Ovis2Config(**kwargs)).eval()
    with torch.no_grad():  # norms at 1, biases at 0: perturb them; the table is N(0, 0.02): scale it to matter
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "position_embedding" in name:
                p.add_(torch.randn_like(p) * 0.1)
        model.model.visual_embeddings_table.weight.mul_(20.0)
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny_ovis2_"))
    model.save_pretrained(folder)
    processor().save_pretrained(folder)
    return folder, model


def batch(proc: Any, images: list[list[tuple[int, int]]], seed: int = 0) -> dict:
    """The processor's output for prompts "USER: words <image>... words ASSISTANT: words" (one <image> per image),
    left padded; image sizes (height, width) per prompt."""
    rows, flat = [], []
    for i, sizes in enumerate(images):
        lead, mid, tail = prompts(3, seed + i)
        rows.append(f"USER: {lead} " + " ".join("<image>" for _ in sizes) + f" {mid} ASSISTANT: {tail}")
        flat += [tiny.pil_image(seed + 10 * i + j, 24).resize((w, h)) for j, (h, w) in enumerate(sizes)]
    out = proc(images=flat or None, text=rows, return_tensors="pt", padding=True)
    return {k: v for k, v in out.items() if k != "grids"}


@functools.lru_cache(maxsize=None)
def ovis2() -> tiny.Built:
    """tests/test_parity.py's factory. Padded batch: item 0 (padded) one 8 x 16 image (1 x 2 crops + thumbnail), item 1
    an 8 x 8 (one crop) and a 16 x 24 image (2 x 2 crops + thumbnail). Unpadded: two items with one 8 x 8 image."""
    folder, hf = make_ovis2()
    proc = processor()
    inputs = batch(proc, [[SIZES[0]], [SIZES[1], SIZES[2]]])
    unpadded = batch(proc, [[SIZES[1]], [SIZES[1]]], seed=5)
    return tiny.load(folder, hf, inputs, unpadded)
