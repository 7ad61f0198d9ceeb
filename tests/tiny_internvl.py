"""Tiny random InternVLForConditionalGeneration checkpoints (+ an offline InternVLProcessor) built from configs in code.

Vision: InternViT, 3 layers, width 16, 2 heads, 8 x 8 px tiles of 2 x 2 px patches (4 x 4 grid), layer scale;
pixel shuffle x2 -> 4 LM tokens per tile. Variants: ``"qwen2"`` (LayerNorm ViT with q/k/v biases, Qwen2 LM with GQA,
tied embeddings, dynamic-NTK RoPE as InternVL3's configs have) and ``"qwen3"`` (the InternViT-6B kind: RMSNorm ViT, no q/k/v biases, RMS q/k norm over all heads;
Qwen3 LM: per-head q/k norms, head_dim 16 != 32 / 4, untied). Norms, biases and layer scales are perturbed.
The batches come from the real processor (GotOcr2 PIL image processor, crop_to_patches, 1..4 tiles + a thumbnail).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests import tiny

VOCAB = tiny.VOCAB  # 120
PAD, BOS, EOS = 0, 1, 2
IMAGE_TOKEN, START, END, VIDEO = 100, 101, 102, 103  # <IMG_CONTEXT>, <img>, </img>, <video>
TILE = 8  # pixels per tile side
TOKENS_PER_TILE = 4
# images of different shapes: 16 x 8 -> 2 tiles + thumbnail, 8 x 8 -> 1 tile, 8 x 24 -> 3 tiles + thumbnail
SIZES = [(16, 8), (8, 8), (8, 24)]  # (height, width)
MAX_POSITIONS = 64  # the Qwen2 case's max_position_embeddings: prompts (35) + 10 generated tokens stay below it


def text_config(kind: str = "qwen2", **overrides: Any) -> dict:
    cfg = dict(model_type=kind, vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
               pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=kind == "qwen2",
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if kind == "qwen2":  # InternVL3's Qwen2.5 LMs: dynamic-NTK RoPE, factor 2 (exact below max_position_embeddings)
        cfg.update(max_position_embeddings=MAX_POSITIONS,
                   rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    if kind == "qwen3":
        cfg.update(head_dim=16, attention_bias=True)
    cfg.update(overrides)
    return cfg


def vision_config(kind: str = "qwen2", **overrides: Any) -> dict:
    cfg = dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24, image_size=TILE,
               patch_size=2, hidden_act="gelu", layer_norm_eps=1e-6)
    if kind == "qwen2":
        cfg.update(norm_type="layer_norm", attention_bias=True, use_qk_norm=False)
    else:
        cfg.update(norm_type="rms_norm", attention_bias=False, use_qk_norm=True)
    cfg.update(overrides)
    return cfg


def tokenizer() -> Any:
    """A WordLevel tokenizer over VOCAB ids with InternVL's image tokens as named special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": 3, "<IMG_CONTEXT>": IMAGE_TOKEN, "<img>": START,
               "</img>": END, "<video>": VIDEO}
    tok = Tokenizer(models.WordLevel(vocab=tiny.word_vocab(special, VOCAB), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"context_image_token": "<IMG_CONTEXT>", "start_image_token": "<img>",
                              "end_image_token": "</img>", "video_token": "<video>"})


def processor() -> Any:
    """HF's InternVLProcessor (without the video processor, which needs torchvision): the PIL GotOcr2 image processor (8 x 8 tiles, 1..4 crops + thumbnail) and the
    word tokenizer; 4 image tokens per tile."""
    from converters._internvl_inputs import InternVLImageProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    image_processor = GotOcr2ImageProcessorPil(size={"height": TILE, "width": TILE}, crop_to_patches=True,
                                               min_patches=1, max_patches=4)
    return InternVLImageProcessor(image_processor=image_processor, tokenizer=tokenizer(), image_seq_length=TOKENS_PER_TILE)


def make_internvl(kind: str = "qwen2", folder: Path | None = None, seed: int = 0, text: dict | None = None,
                  vision: dict | None = None) -> tuple[Path, Any]:
    """Save a tiny random InternVLForConditionalGeneration and its processor; returns (folder, hf model in eval)."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    torch.manual_seed(seed)
    config = InternVLConfig(text_config=text or text_config(kind), vision_config=vision or vision_config(kind),
                            image_token_id=IMAGE_TOKEN, image_seq_length=TOKENS_PER_TILE,
                            tie_word_embeddings=kind == "qwen2")
    model = InternVLForConditionalGeneration(config).eval()
    with torch.no_grad():  # norms at 1, biases at 0, cls / positions at 0, layer scales at 0.1: perturb them
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "lambda" in name or "embeddings.cls" in name \
                    or "position_embeddings" in name:
                p.add_(torch.randn_like(p) * 0.1)
    folder = Path(folder or tempfile.mkdtemp(prefix=f"tiny_internvl_{kind}_"))
    model.save_pretrained(folder)
    processor().save_pretrained(folder)
    return folder, model


def prompts(n: int, seed: int = 0) -> list[str]:
    words = tiny.WORDS[2:]
    g = torch.Generator().manual_seed(seed)
    return [" ".join(words[i] for i in torch.randint(0, len(words), (k,), generator=g).tolist()) for k in (n, 2, 4)]


def batch(proc: Any, images: list[list[tuple[int, int]]], seed: int = 0) -> dict:
    """The processor's output for prompts "USER: <image>... words ASSISTANT:" (one <IMG_CONTEXT> per image), left
    padded; image sizes (height, width) per prompt."""
    rows = []
    flat = []
    for i, sizes in enumerate(images):
        lead, mid, tail = prompts(3, seed + i)
        rows.append(f"USER: {lead} " + " ".join("<IMG_CONTEXT>" for _ in sizes) + f" {mid} ASSISTANT: {tail}")
        flat += [tiny.pil_image(seed + 10 * i + j, 24).resize((w, h)) for j, (h, w) in enumerate(sizes)]
    out = proc(images=flat or None, text=rows, return_tensors="pt", padding=True)
    return {k: v for k, v in out.items()}


@functools.lru_cache(maxsize=None)
def internvl(kind: str = "qwen2") -> tiny.Built:
    """tests/test_parity.py's factory. Padded batch: item 0 one 16 x 8 image (2 tiles + thumbnail), item 1 (padded)
    an 8 x 8 (1 tile) and an 8 x 24 image (3 tiles + thumbnail). Unpadded: two items with one 8 x 8 image each."""
    folder, hf = make_internvl(kind)
    proc = processor()
    inputs = batch(proc, [[SIZES[0]], [SIZES[1], SIZES[2]]])
    unpadded = batch(proc, [[SIZES[1]], [SIZES[1]]], seed=5)
    return tiny.load(folder, hf, inputs, unpadded)
