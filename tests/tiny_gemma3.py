"""A tiny random Gemma3ForConditionalGeneration (+ an offline Gemma3Processor) built from a config in code.

Shapes: SigLIP tower 16x16 px, patch 2 -> 8x8 patches, pooled 2x2 -> 16 image tokens (a 4x4 grid) per image;
LM 4 layers (sliding, full, sliding, full), sliding_window 8 (shorter than an image), GQA 4/2 heads, head_dim 8,
query_pre_attn_scalar 16 (so the attention scale is not head_dim ** -0.5), linear-scaled global rope.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests import tiny

VOCAB = tiny.VOCAB  # 120
IMAGE_TOKEN, BOI, EOI = 100, 101, 102
PAD, BOS, EOS = 0, 2, 1  # Gemma's ids: <pad>=0, <eos>=1, <bos>=2
N_IMAGE_TOKENS = 16
SLIDING_WINDOW = 8
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def gemma3_text_config(**overrides: Any) -> dict:
    cfg = dict(model_type="gemma3_text", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=16,
               max_position_embeddings=512, sliding_window=SLIDING_WINDOW, layer_types=list(LAYER_TYPES),
               rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
               pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, rms_norm_eps=1e-6)
    cfg.update(overrides)
    return cfg


def siglip_vision_config(**overrides: Any) -> dict:
    cfg = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, image_size=16, patch_size=2, num_channels=3, vision_use_head=False)
    cfg.update(overrides)
    return cfg


def make_gemma3(folder: Path | None = None, text: dict | None = None, vision: dict | None = None, seed: int = 0,
                processor: bool = True, **top: Any) -> tuple[Path, Any]:
    """Save a tiny random Gemma3ForConditionalGeneration (and its processor); returns (folder, hf_model in eval mode)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(seed)
    kwargs = dict(text_config=text or gemma3_text_config(), vision_config=vision or siglip_vision_config(),
                  image_token_index=IMAGE_TOKEN, boi_token_index=BOI, eoi_token_index=EOI,
                  mm_tokens_per_image=N_IMAGE_TOKENS)
    kwargs.update(top)
    model = Gemma3ForConditionalGeneration(Gemma3Config(**kwargs)).eval()
    with torch.no_grad():  # init leaves norms at 0 (Gemma: 1 + w), biases at 0 and the projection at 0: perturb
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith("mm_input_projection_weight"):
                p.normal_(0.0, 0.2)
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny_gemma3_"))
    model.save_pretrained(folder)
    if processor:
        save_gemma3_processor(folder, model.config.vision_config.image_size)
    return folder, model


def gemma_tokenizer():
    """A WordLevel tokenizer: <pad>=0, <eos>=1, <bos>=2, words, <image_soft_token>=100, <start_of_image>=101,
    <end_of_image>=102; whitespace (the processor's "\\n\\n" around images) is dropped."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = {"<pad>": PAD, "<eos>": EOS, "<bos>": BOS, "<unk>": 3, "<image_soft_token>": IMAGE_TOKEN,
               "<start_of_image>": BOI, "<end_of_image>": EOI}
    vocab = tiny.word_vocab(special, VOCAB)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", BOS)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                              "eoi_token": "<end_of_image>"})


def save_gemma3_processor(folder: Path, image_size: int = 16):
    """A real Gemma3Processor (word tokenizer + the PIL Gemma3 image processor) saved beside a checkpoint."""
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=gemma_tokenizer(),
                                image_seq_length=N_IMAGE_TOKENS)
    processor.save_pretrained(folder)
    return processor


def gemma3_batch(hf_model: Any, prompts_images: list[int], pad_left: list[int], seed: int = 0, text_len: int = 5,
                 lead: int = 2, right: bool = False) -> dict:
    """input_ids / attention_mask / token_type_ids / pixel_values as the processor lays them out: every image is
    <start_of_image> + 16 image tokens + <end_of_image>, after ``lead`` random words; left padding (right with
    ``right``)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for k in prompts_images:
        ids = [BOS]
        for _ in range(k):
            ids += torch.randint(4, 90, (lead,), generator=g).tolist() + [BOI] + [IMAGE_TOKEN] * N_IMAGE_TOKENS + [EOI]
        ids += torch.randint(4, 90, (text_len,), generator=g).tolist()
        rows.append(ids)
    input_ids, mask = tiny.pad_rows(rows, pad_left, right=right)
    vc = hf_model.config.vision_config
    pixel_values = torch.randn(sum(prompts_images), 3, vc.image_size, vc.image_size, generator=g)
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values,
                token_type_ids=(input_ids == IMAGE_TOKEN).long())


def gemma3_case(**kwargs: Any) -> tuple[Path, Any, dict]:
    """(folder, hf, inputs): batch of 3 (1, 2 and 1 images; left padding 3, 0, 20), prompts longer than the window."""
    folder, hf = make_gemma3(**kwargs)
    return folder, hf, gemma3_batch(hf, [1, 2, 1], [3, 0, 20], text_len=6)


@functools.lru_cache(maxsize=None)
def gemma3() -> "tiny.Built":
    """tests/test_parity.py's factory: gemma3_case's model and batch, plus an unpadded batch (2 x 1 image)."""
    folder, hf, inputs = gemma3_case()
    return tiny.load(folder, hf, inputs, gemma3_batch(hf, [1, 1], [0, 0], seed=1, text_len=6))
