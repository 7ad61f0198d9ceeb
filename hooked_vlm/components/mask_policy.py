"""Mask policy: which keys each layer's queries may see, from the config and the token spans.

``TowerConfig.mask_policy``:
- ``"causal"``: the causal (+ padding, + sliding window) mask every decoder uses.
- ``"causal+image_bidirectional"``: additionally the tokens of one image attend to each other in both
  directions (HF Gemma 3). The image of each position comes from the spans (``image.{i}``); the block is
  OR-ed onto the causal mask before a sliding window is applied (HF: ``AND(window, OR(causal, block))``).

- ``"marked_block"``: the positions whose ``mask_policy_input`` (``mm_token_type_ids``) is 1 form ONE bidirectional
  block (HF Molmo 2: every image token and image marker of the item, across its images); the rest is causal. As HF,
  only on a forward without a filled KV cache, and OR-ed on after a sliding window.

- ``"prefix"``: prefix-LM (HF PaliGemma): the positions whose ``mask_policy_input`` (``token_type_ids``) is 0 --
  image + prefix text, as the processor marks them -- form one block that attends to itself in both directions; the
  suffix (1) is causal. Positions beyond the given ids (generated tokens) are suffix. As in HF the block is OR-ed on
  AFTER the sliding window, and it applies only to a forward without a filled KV cache (HF: the first iteration).

``TowerConfig.mask_policy_layer_types`` limits the blocks to those layer kinds (Gemma 4: sliding layers only; its
full layers stay causal). ``TowerConfig.layer_types`` gives each layer its kind: ``"sliding_attention"`` layers get the
sliding window, ``"chunked_attention"`` layers get ``attention_chunk_size`` chunks (Llama 4), ``"full_attention"``
layers neither. Every layer's mask is shown at ``blocks.{l}.attn.hook_mask``, so attention
knockout (which edits that hook) works on every policy unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from ..config import TowerConfig
from .masks import AttentionMask


def image_block_ids(spans: Any) -> torch.Tensor:
    """[batch, pos]: the image index (within its batch item) of every image-content token, -1 elsewhere."""
    return torch.where(spans.mask("image"), spans.grid[..., 0], torch.full_like(spans.grid[..., 0], -1))


def prefix_block_ids(cfg: TowerConfig, spans: Any, inputs: Mapping[str, Any], past: int) -> torch.Tensor | None:
    """[batch, k_len]: 0 on the prefix (mask_policy_input == 0), -1 on the suffix and after the given ids."""
    marks = _binary_marks(cfg, spans, inputs, past, "0 (prefix: bidirectional) or 1 (suffix: causal)")
    return None if marks is None else _blocks(spans, marks, block_value=0)


def _binary_marks(cfg: TowerConfig, spans: Any, inputs: Mapping[str, Any], past: int, meaning: str
                  ) -> torch.Tensor | None:
    """The 0 / 1 input ``cfg.mask_policy_input`` [batch, n <= k_len], checked; None without it or with a filled KV
    cache (the block policies apply on the prefill only)."""
    marks = inputs.get(cfg.mask_policy_input)
    if marks is None or past > 0:
        return None
    marks = torch.as_tensor(marks).to(spans.grid.device)
    if marks.ndim != 2 or marks.shape[0] != spans.batch or marks.shape[-1] > spans.seq_len:
        raise ValueError(f"{cfg.mask_policy_input} has shape {tuple(marks.shape)}; expected [batch, pos] like "
                         f"input_ids ({spans.batch}, {spans.seq_len})")
    if not bool(((marks == 0) | (marks == 1)).all()):
        raise ValueError(f"{cfg.mask_policy_input} must be {meaning}; got the values "
                         f"{sorted(set(marks.flatten().tolist()))}")
    return marks


def _blocks(spans: Any, marks: torch.Tensor, block_value: int) -> torch.Tensor:
    """[batch, k_len]: block 0 where ``marks == block_value``, -1 elsewhere and after the given ids."""
    blocks = torch.full((spans.batch, spans.seq_len), -1, dtype=torch.long, device=marks.device)
    blocks[:, :marks.shape[-1]] = torch.where(marks == block_value, 0, -1)
    return blocks


def marked_block_ids(cfg: TowerConfig, spans: Any, inputs: Mapping[str, Any], past: int) -> torch.Tensor | None:
    """[batch, k_len]: 0 where mask_policy_input is 1 (HF Molmo 2: every image token and marker), -1 elsewhere and
    after the given ids; None without that input or with a filled KV cache (HF builds the block on the prefill only).
    Every image token must be marked (the block is read from the input, the image features from the spans)."""
    marks = _binary_marks(cfg, spans, inputs, past, "0 (text: causal) or 1 (image tokens and markers: one "
                          "bidirectional block)")
    if marks is None:
        return None
    image = spans.mask("image")[:, :marks.shape[-1]]
    if bool((image & (marks != 1)).any()):
        raise ValueError(f"{cfg.mask_policy_input} leaves image tokens unmarked (it must be 1 at every image token and "
                         "marker); pass the processor's output unchanged or omit it for a causal mask")
    return _blocks(spans, marks, block_value=1)


def policy_block_ids(cfg: TowerConfig, spans: Any, inputs: Mapping[str, Any], past: int = 0) -> torch.Tensor | None:
    """Bidirectional blocks of this forward, or None when the policy adds none.

    With ``cfg.mask_policy_input`` set (HF Gemma 3: ``token_type_ids``), the policy is on only when that input is
    given -- as in HF, whose forward builds the bidirectional mask only then -- and the input must mark exactly the
    image tokens (1) of the spans: HF groups by that input, we by the spans, so a mismatch would mean other numbers.
    """
    if cfg.mask_policy == "causal":
        return None
    if cfg.mask_policy == "prefix":
        return prefix_block_ids(cfg, spans, inputs, past)
    if cfg.mask_policy == "marked_block":
        return marked_block_ids(cfg, spans, inputs, past)
    if cfg.mask_policy_input is not None:
        marks = inputs.get(cfg.mask_policy_input)
        if marks is None:
            return None
        marks = torch.as_tensor(marks).to(spans.grid.device)
        image = spans.mask("image")
        n = marks.shape[-1]
        if marks.ndim != 2 or marks.shape[0] != image.shape[0] or n > image.shape[1]:
            raise ValueError(f"{cfg.mask_policy_input} has shape {tuple(marks.shape)}; expected [batch, pos] like "
                             f"input_ids {tuple(image.shape)}")
        real = spans.mask("pad")[:, :n].logical_not()
        if not torch.equal((marks == 1) & real, image[:, :n] & real):
            raise ValueError(f"{cfg.mask_policy_input} does not mark exactly the image tokens (1 at every image "
                             f"token, 0 elsewhere); the bidirectional image mask is built from it. Pass the "
                             "processor's output unchanged (model.prepare_inputs) or omit it for a causal mask.")
    return image_block_ids(spans)


def layer_masks(cfg: TowerConfig, base: AttentionMask, block_ids: torch.Tensor | None) -> list[AttentionMask]:
    """One mask per layer; with no layer_types and no blocks every layer gets ``base`` itself."""
    mask = base if block_ids is None else dataclasses.replace(base, block_ids=block_ids,
                                                             block_after_window=cfg.mask_policy in ("prefix", "marked_block"))
    if cfg.layer_types is None:
        return [mask] * cfg.n_layers
    kinds = cfg.mask_policy_layer_types  # None: the blocks on every layer kind (Gemma 4: sliding layers only)
    plain = lambda kind: block_ids is not None and kinds is not None and kind not in kinds  # noqa: E731
    masks = {}
    for kind in set(cfg.layer_types):
        source = base if plain(kind) else mask
        masks[kind] = dataclasses.replace(source, sliding_window=cfg.sliding_window if kind == "sliding_attention" else None,
                                          chunk_size=cfg.attention_chunk_size if kind == "chunked_attention" else None)
    return [masks[kind] for kind in cfg.layer_types]
