"""Tiny random Gemma4ForConditionalGeneration text models (no vision / audio tower) built from a config in code.

LM 6 layers (sliding, full) x 3, sliding_window 8 (prompts are 14-26 tokens), GQA 4/2 heads, head_dim 8; full layers
have global_head_dim 16 and proportional RoPE turning a quarter of it. Variants (one cached factory each):
- "ple_kv": per-layer inputs (8 per layer) + the last 2 layers share keys / values (layer 4 reads layer 2's, layer 5
  layer 3's) with double-wide MLPs;
- "k_eq_v_moe": full layers with values = keys and 1 KV head (num_global_key_value_heads), and the MoE block (4 experts,
  top 2) beside every dense MLP; no PLE, no sharing.
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
                   enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=16),
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


def tiny_hf_config(variant: str) -> Any:
    """The Gemma4Config of a variant (text only)."""
    from transformers import Gemma4Config

    return Gemma4Config(text_config=gemma4_text_config(**VARIANTS[variant]), vision_config=None, audio_config=None,
                        image_token_id=IMAGE, boi_token_id=BOI, eoi_token_id=EOI, video_token_id=VIDEO,
                        audio_token_id=AUDIO, boa_token_id=BOA, eoa_token_index=EOA)


def make_gemma4(variant: str, folder: Path | None = None, seed: int = 0) -> tuple[Path, Any]:
    """Save a tiny random Gemma4ForConditionalGeneration (text only); returns (folder, hf_model in eval mode)."""
    from transformers import Gemma4ForConditionalGeneration

    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(tiny_hf_config(variant)).eval()
    with torch.no_grad():  # norms and layer scalars start at 1: perturb them so a misplaced one shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            if name.endswith(("router.scale", "per_expert_scale")):  # start at 1: perturb (each one must be read)
                p.add_(torch.randn_like(p) * 0.3)
            if name.endswith(("q_norm.weight", "k_norm.weight")):  # attention scale is 1.0: scores up to ~d_head with
                p.mul_(0.4)  # unit q / k norms; halved, the softmax is less sharp (path diffs ~1e-6, not 1e-5)
        for name, buf in model.named_buffers():
            if name.endswith("layer_scalar"):
                buf.copy_(1.0 + torch.randn_like(buf) * 0.2)
    folder = Path(folder or tempfile.mkdtemp(prefix=f"tiny_gemma4_{variant}_"))
    model.save_pretrained(folder)
    return folder, model


def gemma4_batch(lengths: list[int], pad_left: list[int], seed: int = 0) -> dict:
    """Text rows <bos> + random words (ids 4..89), left padded."""
    g = torch.Generator().manual_seed(seed)
    rows = [[BOS] + torch.randint(4, 90, (n - 1,), generator=g).tolist() for n in lengths]
    input_ids, mask = tiny.pad_rows(rows, pad_left)
    return dict(input_ids=input_ids, attention_mask=mask)


@functools.lru_cache(maxsize=None)
def gemma4(variant: str = "ple_kv") -> "tiny.Built":
    """tests/test_parity.py's factory: a padded batch of 3 (prompts 26, 14 and 20 tokens, longer than the window)
    and an unpadded batch of 2 x 18 tokens."""
    folder, hf = make_gemma4(variant)
    return tiny.load(folder, hf, gemma4_batch([26, 14, 20], [0, 12, 6]), gemma4_batch([18, 18], [0, 0], seed=1),
                     processor=None)
