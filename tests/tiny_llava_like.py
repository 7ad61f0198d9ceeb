"""Tiny random checkpoints of the LLaVA-like families that are declarations (converters/llava_like.py), built offline.

One cached factory per family (a :class:`tests.tiny.Built`): ``vipllava`` (CLIP, 3 layers concatenated, LayerNorm
MLP projector, Llama), ``granite_vision`` (LLaVA-NeXT: SigLIP with 2 layers concatenated, Granite LM with its
multipliers), ``lighton_ocr`` (Pixtral tower, RMSNorm + patch merger + bias-free MLP, Qwen3 LM). The padded batches
are laid out as each family's real processor lays them out: the VipLlava batch IS the LlavaProcessor's output (left
padding), LLaVA-NeXT's token counts come from HF's own packing (tiny_next_pixtral.anyres_batch), LightOnOcr's are
``[IMG] x (rows * cols)`` of the merged grid, no row breaks (LightOnOcrProcessor.replace_image_token).
``llava_next_video``: LLaVA-NeXT-Video's image path (CLIP, Llama), with the conv video pooler in the checkpoint.
``deepseek_vl``: SigLIP read after post_layernorm, linear1 / GELU / linear2 aligner, tied Llama; the image token
repeated once per patch (DeepseekVLProcessor's layout).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from tests import tiny
from tests import tiny_next_pixtral as tnp
from tests.tiny import IMAGE_TOKEN, Built, llama_text_config, load, pad_rows


def granite_text_config(**overrides: Any) -> dict:
    """Granite with every multiplier away from 1 (the real granite-vision-3.x values scaled to the tiny width)."""
    cfg = llama_text_config(model_type="granite", num_key_value_heads=2, embedding_multiplier=3.0,
                            residual_multiplier=0.5, attention_multiplier=0.25, logits_scaling=4.0)
    cfg.update(overrides)
    return cfg


# ---------------------------------------------------------------- VipLlava
def make_vipllava(seed: int = 0):
    from transformers import VipLlavaConfig, VipLlavaForConditionalGeneration

    config = VipLlavaConfig(text_config=llama_text_config(), vision_config=tiny.clip_vision_config(num_hidden_layers=4),
                            image_token_index=IMAGE_TOKEN, vision_feature_layers=[-2, -5, 1],
                            projector_layernorm_eps=1e-5)
    return tnp._save(config, VipLlavaForConditionalGeneration, "tiny_vipllava_", seed)


def vipllava_processor():
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    ip = CLIPImageProcessorPil(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8})
    tok = tiny.word_tokenizer()
    tok.padding_side = "left"
    return LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=2, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, image_token="<image>")


def processor_batch(processor: Any, prompts: list[str], n_images: list[int], seed: int) -> dict:
    images = [tiny.pil_image(seed * 10 + i, size=12 + 3 * i) for i in range(sum(n_images))]
    out = processor(images=images, text=prompts, return_tensors="pt", padding=True)
    return {k: v for k, v in dict(out).items() if k in ("input_ids", "attention_mask", "pixel_values")}


@functools.lru_cache(maxsize=None)
def vipllava() -> Built:
    folder, hf = make_vipllava()
    processor = vipllava_processor()
    processor.save_pretrained(folder)
    inputs = processor_batch(processor, ["USER: <image> what is this ? ASSISTANT:",
                                         "USER: <image> red <image> describe the color of the image ASSISTANT:"],
                             [1, 2], seed=0)
    unpadded = processor_batch(processor, ["USER: <image> what is this ?", "USER: <image> the red circle ?"], [1, 1],
                               seed=1)
    return load(folder, hf, inputs, unpadded)


# ---------------------------------------------------------------- Granite vision (LLaVA-NeXT + Granite LM)
def make_granite_vision(seed: int = 0):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    config = LlavaNextConfig(text_config=granite_text_config(), vision_config=tnp.siglip_vision(num_hidden_layers=3),
                             image_token_id=IMAGE_TOKEN, vision_feature_layer=[-3, -1],
                             vision_feature_select_strategy="full", image_grid_pinpoints=tnp.PINPOINTS)
    return tnp._save(config, LlavaNextForConditionalGeneration, "tiny_granite_vision_", seed)


def granite_vision_processor():
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    ip = LlavaNextImageProcessorPil(size={"height": 8, "width": 8}, image_grid_pinpoints=tnp.PINPOINTS,
                                    do_center_crop=False)
    return LlavaNextProcessor(image_processor=ip, tokenizer=tnp.offline_tokenizer(), patch_size=2,
                              vision_feature_select_strategy="full", num_additional_image_tokens=0,
                              image_token="<image>")


@functools.lru_cache(maxsize=None)
def granite_vision() -> Built:
    folder, hf = make_granite_vision()
    inputs = tnp.anyres_batch(hf, [(8, 13), (15, 6), (20, 21)], per_item=[1, 2], pad_left=[4, 0])
    unpadded = tnp.anyres_batch(hf, [(8, 13), (8, 13)], [1, 1], [0, 0], seed=1)
    return load(folder, hf, inputs, unpadded, granite_vision_processor())


# ---------------------------------------------------------------- LightOnOcr (Pixtral + patch merger + Qwen3)
def make_lighton_ocr(seed: int = 0):
    from transformers import LightOnOcrConfig, LightOnOcrForConditionalGeneration

    config = LightOnOcrConfig(
        text_config=llama_text_config(model_type="qwen3", num_key_value_heads=2, head_dim=8, tie_word_embeddings=True),
        vision_config=tnp.pixtral_vision(), image_token_id=IMAGE_TOKEN, spatial_merge_size=2, tie_word_embeddings=True)
    return tnp._save(config, LightOnOcrForConditionalGeneration, "tiny_lighton_ocr_", seed)


def lighton_batch(hf: Any, image_sizes: list[tuple[int, int]], per_item: list[int], pad_left: list[int],
                  seed: int = 0) -> dict:
    """Images padded to the largest; [IMG] x (rows // 2) * (cols // 2) per image (LightOnOcrProcessor's layout)."""
    g = torch.Generator().manual_seed(seed)
    p = hf.config.vision_config.patch_size * hf.config.spatial_merge_size
    sizes = torch.tensor(image_sizes)
    pixel_values = torch.zeros(len(image_sizes), 3, int(sizes[:, 0].max()), int(sizes[:, 1].max()))
    for i, (h, w) in enumerate(image_sizes):
        pixel_values[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
    counts = iter([(h // p) * (w // p) for h, w in image_sizes])
    runs = [[[IMAGE_TOKEN] * next(counts) for _ in range(k)] for k in per_item]
    input_ids, mask = pad_rows(tnp._rows(runs, g), pad_left)
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, image_sizes=sizes)


@functools.lru_cache(maxsize=None)
def lighton_ocr() -> Built:
    folder, hf = make_lighton_ocr()
    inputs = lighton_batch(hf, [(16, 8), (8, 12), (4, 4)], per_item=[1, 2], pad_left=[3, 0])
    unpadded = lighton_batch(hf, [(16, 8), (16, 8)], [1, 1], [0, 0], seed=1)
    return load(folder, hf, inputs, unpadded, None)


# ---------------------------------------------------------------- LLaVA-NeXT-Video (images; the video pooler unused)
def make_llava_next_video(seed: int = 0):
    from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    config = LlavaNextVideoConfig(text_config=llama_text_config(num_key_value_heads=2), vision_config=tnp.clip_vision(),
                                  image_token_id=IMAGE_TOKEN, video_token_id=tnp.VIDEO_TOKEN, vision_feature_layer=-2,
                                  vision_feature_select_strategy="default", image_grid_pinpoints=tnp.PINPOINTS,
                                  spatial_pool_mode="conv", spatial_pool_stride=2)
    return tnp._save(config, LlavaNextVideoForConditionalGeneration, "tiny_next_video_", seed)


@functools.lru_cache(maxsize=None)
def llava_next_video() -> Built:
    folder, hf = make_llava_next_video()
    inputs = tnp.anyres_batch(hf, [(8, 13), (15, 6), (20, 21)], per_item=[1, 2], pad_left=[4, 0])
    unpadded = tnp.anyres_batch(hf, [(8, 13), (8, 13)], [1, 1], [0, 0], seed=1)
    return load(folder, hf, inputs, unpadded, tnp.next_processor())


# ---------------------------------------------------------------- DeepSeek-VL (SigLIP after post_layernorm + aligner)
def make_deepseek_vl(seed: int = 0):
    from transformers import DeepseekVLConfig, DeepseekVLForConditionalGeneration

    config = DeepseekVLConfig(text_config=llama_text_config(num_key_value_heads=2),
                              vision_config=tnp.siglip_vision(vision_use_head=False), image_token_id=IMAGE_TOKEN)
    return tnp._save(config, DeepseekVLForConditionalGeneration, "tiny_deepseek_vl_", seed)


def deepseek_vl_batch(hf: Any, images: list[int], pad_left: list[int], seed: int = 0) -> dict:
    """DeepseekVLProcessor's layout: num_image_tokens (the whole patch grid, no class token, no markers) x the image
    token per image, between words."""
    g = torch.Generator().manual_seed(seed)
    vc = hf.config.vision_config
    runs = [[[IMAGE_TOKEN] * (vc.image_size // vc.patch_size) ** 2 for _ in range(k)] for k in images]
    input_ids, mask = pad_rows(tnp._rows(runs, g), pad_left)
    pixel_values = torch.randn(sum(images), 3, vc.image_size, vc.image_size, generator=g)
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values)


@functools.lru_cache(maxsize=None)
def deepseek_vl() -> Built:
    folder, hf = make_deepseek_vl()
    inputs = deepseek_vl_batch(hf, [1, 2], [3, 0])
    unpadded = deepseek_vl_batch(hf, [1, 1], [0, 0], seed=1)
    return load(folder, hf, inputs, unpadded, None)
