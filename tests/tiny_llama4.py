"""Tiny Llama 4 language model (HF ``Llama4ForCausalLM``, fp32, random) and our HookedVLM built from its weights.

One cached factory shared by the Llama 4 tests. Every Llama 4 LM part is on: chunked local attention on the RoPE
layers (chunk 8 < the prompts' length), NoPE full-attention layers with temperature tuning (floor_scale 4, so the
factor changes inside the prompt), L2 q/k norm, MoE layers (every second) with a shared expert and top-2 sigmoid
routing on the expert input, dense layers of another width, GQA.
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
