"""Tiny random checkpoints of the families with SAM's ViT, built offline.

``deepseek_vl_hybrid``: SigLIP (8 px, 4 x 4 patches) beside a SAM ViT on 32 px (8 x 8 patches, 3 layers: window 3,
so the 8 x 8 grid is zero-padded to 9 x 9 in the windowed layers; layer 1 global), the hybrid aligner, a Llama LM.
SAM's zero-initialised tensors (absolute positions, relative-position tables, the aligner's ``high_res_vision_alpha``)
are randomised so each one matters. The batch is DeepseekVLHybridProcessor's layout: the image token repeated
``num_image_tokens`` (= the SigLIP patch grid) times per image, no markers; ``high_res_pixel_values`` beside
``pixel_values``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from tests import tiny_next_pixtral as tnp
from tests.tiny import IMAGE_TOKEN, Built, llama_text_config, load, pad_rows

ZERO_INIT = ("pos_embed", "rel_pos_h", "rel_pos_w", "high_res_vision_alpha")


def sam_vision(**overrides: Any) -> dict:
    cfg = dict(model_type="sam_vision_model", hidden_size=16, output_channels=8, num_hidden_layers=3,
               num_attention_heads=2, image_size=32, patch_size=4, window_size=3, global_attn_indexes=[1], mlp_dim=32,
               initializer_range=0.2)  # SAM's default 1e-10 leaves every matrix ~0: the attention would do nothing
    cfg.update(overrides)
    return cfg


def _randomise_zero_init(hf: Any, folder: Any) -> None:
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(ZERO_INIT):
                p.copy_(torch.randn_like(p) * 0.5)
    hf.save_pretrained(folder)


# ---------------------------------------------------------------- DeepSeek-VL-Hybrid
def make_deepseek_vl_hybrid(seed: int = 0):
    from transformers import DeepseekVLHybridConfig, DeepseekVLHybridForConditionalGeneration

    config = DeepseekVLHybridConfig(text_config=llama_text_config(num_key_value_heads=2),
                                    vision_config=tnp.siglip_vision(vision_use_head=False),
                                    high_res_vision_config=sam_vision(), image_token_id=IMAGE_TOKEN)
    folder, hf = tnp._save(config, DeepseekVLHybridForConditionalGeneration, "tiny_deepseek_vl_hybrid_", seed)
    _randomise_zero_init(hf, folder)
    return folder, hf


def deepseek_vl_hybrid_batch(hf: Any, images: list[int], pad_left: list[int], seed: int = 0) -> dict:
    """DeepseekVLHybridProcessor's layout: num_image_tokens (the SigLIP patch grid) x the image token per image,
    between words; each image at both resolutions."""
    g = torch.Generator().manual_seed(seed)
    vc, hc = hf.config.vision_config, hf.config.high_res_vision_config
    runs = [[[IMAGE_TOKEN] * (vc.image_size // vc.patch_size) ** 2 for _ in range(k)] for k in images]
    input_ids, mask = pad_rows(tnp._rows(runs, g), pad_left)
    n = sum(images)
    return dict(input_ids=input_ids, attention_mask=mask,
                pixel_values=torch.randn(n, 3, vc.image_size, vc.image_size, generator=g),
                high_res_pixel_values=torch.randn(n, 3, hc.image_size, hc.image_size, generator=g))


@functools.lru_cache(maxsize=None)
def deepseek_vl_hybrid() -> Built:
    folder, hf = make_deepseek_vl_hybrid()
    inputs = deepseek_vl_hybrid_batch(hf, [1, 2], [3, 0])
    unpadded = deepseek_vl_hybrid_batch(hf, [1, 1], [0, 0], seed=1)
    return load(folder, hf, inputs, unpadded, None)
