"""Tiny random Gemma4ForConditionalGeneration models (image tower, no audio tower) built from a config in code.

Vision tower: 2 layers, d 16, 2 heads of 8, patch 2 (12 pixels per patch), pooling kernel 2: an image of 8x8 px is
4x4 patches -> 2x2 = 4 soft tokens, 8x12 px is 4x6 patches -> 2x3 = 6 soft tokens; patch lists padded to 24 patches.
LM 6 layers (sliding, full) x 3, sliding_window 8 (prompts are 14-26 tokens), GQA 4/2 heads, head_dim 8; full layers
have global_head_dim 16 and proportional RoPE turning a quarter of it. Variants (one cached factory each):
- "ple_kv": per-layer inputs (8 per layer) + the last 2 layers share keys / values (layer 4 reads layer 2's, layer 5
  layer 3's) with double-wide MLPs;
- "k_eq_v_moe": full layers with values = keys and 1 KV head (num_global_key_value_heads), and the MoE block (4 experts,
  top 2) beside every dense MLP; no PLE, no sharing.
  It also has bidirectional attention inside each image on sliding layers (use_bidirectional_attention="vision").
Both: final logit soft-cap 0.5 (uncapped logits reach ~0.4: the cap bends them), random layer scalars and norm weights.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests import tiny

VOCAB = tiny.VOCAB  # 120
PAD, EOS, BOS = 0, 1, 2
IMAGE, BOI, EOI, VIDEO, AUDIO, BOA, EOA = 100, 101, 102, 103, 104, 105, 106
SLIDING_WINDOW = 8
LAYER_TYPES = ["sliding_attention", "full_attention"] * 3
VARIANTS = {
    "ple_kv": dict(hidden_size_per_layer_input=8, vocab_size_per_layer_input=VOCAB, num_kv_shared_layers=2,
                   use_double_wide_mlp=True),
    "k_eq_v_moe": dict(hidden_size_per_layer_input=0, attention_k_eq_v=True, num_global_key_value_heads=1,
                       enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=16,
                       use_bidirectional_attention="vision"),
}


def gemma4_text_config(**overrides: Any) -> dict:
    cfg = dict(model_type="gemma4_text", vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=6,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, global_head_dim=16,
               max_position_embeddings=512, sliding_window=SLIDING_WINDOW, layer_types=list(LAYER_TYPES),
               rope_parameters={"full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                                   "rope_theta": 1_000_000.0},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
               final_logit_softcapping=0.5, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, rms_norm_eps=1e-6,
               hidden_size_per_layer_input=0, vocab_size_per_layer_input=VOCAB)
    cfg.update(overrides)
    return cfg


PATCH, KERNEL, MAX_PATCHES = 2, 2, 24


def gemma4_vision_config(**overrides: Any) -> dict:
    cfg = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=24, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=2, head_dim=8, patch_size=PATCH, pooling_kernel_size=KERNEL,
               position_embedding_size=16, standardize=True, rms_norm_eps=1e-6)
    cfg.update(overrides)
    return cfg


def tiny_hf_config(variant: str, **text: Any) -> Any:
    """The Gemma4Config of a variant (``text``: more text_config overrides, e.g. benchmark sizes)."""
    from transformers import Gemma4Config

    return Gemma4Config(text_config=gemma4_text_config(**{**VARIANTS[variant], **text}),
                        vision_config=gemma4_vision_config(),
                        audio_config=None,
                        image_token_id=IMAGE, boi_token_id=BOI, eoi_token_id=EOI, video_token_id=VIDEO,
                        audio_token_id=AUDIO, boa_token_id=BOA, eoa_token_index=EOA)


def make_gemma4(variant: str, folder: Path | None = None, seed: int = 0, **text: Any) -> tuple[Path, Any]:
    """Save a tiny random Gemma4ForConditionalGeneration; returns (folder, hf_model in eval mode)."""
    from transformers import Gemma4ForConditionalGeneration

    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(tiny_hf_config(variant, **text)).eval()
    with torch.no_grad():  # norms and layer scalars start at 1: perturb them so a misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith(("router.scale", "per_expert_scale")):  # start at 1: perturb (each one must be read)
                p.add_(torch.randn_like(p) * 0.3)
            if name.endswith(("q_norm.weight", "k_norm.weight")):  # attention scale is 1.0: scores up to ~d_head with
                p.mul_(0.4)  # unit q / k norms; halved, the softmax is less sharp (path diffs ~1e-6, not 1e-5)
            if name.endswith("position_embedding_table"):  # initialised to ones: a constant would hide a wrong axis
                p.normal_(0.0, 0.5)
        for name, buf in model.named_buffers():
            if name.endswith("layer_scalar"):
                buf.copy_(1.0 + torch.randn_like(buf) * 0.2)
            if name.endswith(("std_bias", "std_scale")):  # torch.empty at init
                buf.copy_(torch.randn_like(buf) * 0.3 + (1.0 if name.endswith("scale") else 0.0))
    folder = Path(folder or tempfile.mkdtemp(prefix=f"tiny_gemma4_{variant}_"))
    model.save_pretrained(folder)
    return folder, model


def patchify(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[3, H, W] in [0, 1] -> (patches [MAX_PATCHES, 3 * PATCH ** 2], positions [MAX_PATCHES, 2]) as
    Gemma4ImageProcessor lays them out (row-major patches, (x, y) positions, -1 padding)."""
    from transformers.models.gemma4.image_processing_pil_gemma4 import convert_image_to_patches  # no torchvision

    rows, cols = image.shape[1] // PATCH, image.shape[2] // PATCH
    patches = torch.from_numpy(convert_image_to_patches(image.numpy(), PATCH))
    grid = torch.stack(torch.meshgrid(torch.arange(cols), torch.arange(rows), indexing="xy"), -1).reshape(-1, 2)
    out = torch.zeros(MAX_PATCHES, patches.shape[1])
    pos = torch.full((MAX_PATCHES, 2), -1, dtype=torch.long)
    out[: len(patches)], pos[: len(grid)] = patches, grid
    return out, pos


def gemma4_batch(rows_spec: list[tuple[int, list[tuple[int, int]], int]], pad_left: list[int], seed: int = 0) -> dict:
    """One row per (lead words, images as (height, width) px, trailing words): <bos> + words + per image
    <boi> + soft tokens + <eoi> + words; left padded; pixel_values / image_position_ids / mm_token_type_ids as the
    processor makes them."""
    g = torch.Generator().manual_seed(seed)
    rows, patches, positions = [], [], []
    for lead, images, trail in rows_spec:
        ids = [BOS] + torch.randint(4, 90, (lead,), generator=g).tolist()
        for h, w in images:
            ids += [BOI] + [IMAGE] * ((h // PATCH // KERNEL) * (w // PATCH // KERNEL)) + [EOI]
            ids += torch.randint(4, 90, (2,), generator=g).tolist()
            p, pos = patchify(torch.rand(3, h, w, generator=g))
            patches.append(p)
            positions.append(pos)
        rows.append(ids + torch.randint(4, 90, (trail,), generator=g).tolist())
    input_ids, mask = tiny.pad_rows(rows, pad_left)
    out = dict(input_ids=input_ids, attention_mask=mask, mm_token_type_ids=(input_ids == IMAGE).long())
    if patches:
        out.update(pixel_values=torch.stack(patches), image_position_ids=torch.stack(positions))
    return out


@functools.lru_cache(maxsize=None)
def gemma4(variant: str = "ple_kv") -> "tiny.Built":
    """tests/test_parity.py's factory: a padded batch of 3 (images of two sizes: 8x8 px -> 4 soft tokens, 8x12 px ->
    6; prompts of 18-27 tokens, longer than the window 8, with an image inside) and an unpadded batch of 2."""
    folder, hf = make_gemma4(variant)
    padded = gemma4_batch([(3, [(8, 8)], 8), (2, [(8, 12), (8, 8)], 3), (9, [], 9)], [0, 3, 9])
    unpadded = gemma4_batch([(2, [(8, 12)], 6), (4, [(8, 8)], 6)], [0, 0], seed=1)
    return tiny.load(folder, hf, padded, unpadded, processor=None)
