"""A transformer block, readable top to bottom (used by the LM and the vision tower): pre-norm, Swin-style
post-sublayer norm, or Gemma's sandwich (``cfg.norm_placement``); pre-norm blocks may scale their sublayer outputs
by learned gains ``ls1`` / ``ls2`` (``cfg.layer_scale``, InternViT).

The token mixer comes from the layer's ``layer_types`` entry through ``components/mixers.py`` MIXERS and sits under
that kind's attribute name (``attn`` for attention, ``linear_attn`` for Gated DeltaNet, ...); ``block.mixer`` is it
whatever its name, ``block.mixer_kind`` the entry. ``hook_attn_out`` is the mixer's output whatever the kind.

Parallel blocks (``cfg.parallel_block``, Cohere / Command R): one norm ``ln1`` feeds the mixer AND the MLP, and
``resid_post = resid_pre + attn_out + mlp_out``. Such a block has no ``ln2`` and no ``hook_resid_mid`` (no residual
exists between the sublayers, and a hook that never fires is not created); ``blocks.{l}.ln1.hook_normalized`` is the
input of both sublayers (analyses' "mlp_in" is ln1's output there)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import TowerConfig
from ..hook_points import HookPoint
from .masks import AttentionMask
from .mixers import layer_kind, mixer_kind
from .moe import build_mlp
from .norms import make_norm


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TowerConfig, layer: int = 0):
        super().__init__()
        norm = lambda: make_norm(cfg.normalization_type, cfg.d_model, cfg.norm_eps, cfg.norm_offset,  # noqa: E731
                                 bias=cfg.norm_bias)
        self.ln1 = norm()
        self.mixer_kind = layer_kind(cfg, layer)
        spec = mixer_kind(self.mixer_kind)
        self._mixer_attr = spec.attr
        setattr(self, spec.attr, spec.build(cfg, layer))  # blocks.{l}.attn / .linear_attn / ...
        self.parallel = cfg.parallel_block
        self.ln2 = None if self.parallel else norm()
        self.mlp = build_mlp(cfg, layer)  # dense MLP unless cfg.mlp_kind == "moe" (components/moe.py)
        self.post_sublayer_norm = cfg.norm_placement == "post_sublayer"
        if cfg.norm_placement == "sandwich":  # Gemma: the sublayer outputs are normed too (TL's ln1_post / ln2_post)
            self.ln1_post, self.ln2_post = norm(), norm()
        else:
            self.ln1_post = self.ln2_post = None
        # layer scale (InternViT): per-channel gains on the sublayer outputs, before they are added (and hooked)
        self.ls1 = nn.Parameter(torch.ones(cfg.d_model)) if cfg.layer_scale else None
        self.ls2 = nn.Parameter(torch.ones(cfg.d_model)) if cfg.layer_scale else None
        self.residual_multiplier = cfg.residual_multiplier  # Granite: a scalar on the sublayer outputs (1.0: none)

        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        if not self.parallel:
            self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(
        self,
        resid: torch.Tensor,  # [batch, pos, d_model]
        mask: AttentionMask,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: Any = None,  # this layer's state in the KVCache (components/mixers.py: MIXERS[kind].state)
    ) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        if self.parallel:  # one norm, both sublayers read it, both outputs added at once
            x = self.ln1(resid)
            attn_out = self.hook_attn_out(self.mixer(x, mask, rotary, kv_cache))
            return self.hook_resid_post(resid + attn_out + self.hook_mlp_out(self.mlp(x)))
        if self.post_sublayer_norm:  # Swin-style: the sublayer's OUTPUT is normed (hook_attn_out/mlp_out after it)
            attn_out = self.hook_attn_out(self.ln1(self.mixer(resid, mask, rotary, kv_cache)))
            resid = self.hook_resid_mid(resid + attn_out)
            return self.hook_resid_post(resid + self.hook_mlp_out(self.ln2(self.mlp(resid))))
        if self.ln1_post is not None:  # sandwich: hook_attn_out / hook_mlp_out are what is added (after ln*_post)
            attn_out = self.hook_attn_out(self.ln1_post(self.mixer(self.ln1(resid), mask, rotary, kv_cache)))
            resid = self.hook_resid_mid(resid + attn_out)
            return self.hook_resid_post(resid + self.hook_mlp_out(self.ln2_post(self.mlp(self.ln2(resid)))))
        attn_out = self.hook_attn_out(self._scaled(self.mixer(self.ln1(resid), mask, rotary, kv_cache), self.ls1))
        resid = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(self._scaled(self.mlp(self.ln2(resid)), self.ls2))
        return self.hook_resid_post(resid + mlp_out)

    @property
    def mixer(self) -> nn.Module:
        """The token mixer, whatever its kind's attribute name."""
        return getattr(self, self._mixer_attr)

    def _scaled(self, out: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
        out = out if gain is None else gain * out
        return out if self.residual_multiplier == 1.0 else out * self.residual_multiplier
