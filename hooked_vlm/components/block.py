"""A transformer block, readable top to bottom (used by the LM and the vision tower): pre-norm, Swin-style
post-sublayer norm, or Gemma's sandwich (``cfg.norm_placement``); pre-norm blocks may scale their sublayer outputs
by learned gains ``ls1`` / ``ls2`` (``cfg.layer_scale``, InternViT)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import TowerConfig
from ..hook_points import HookPoint
from .attention import Attention, LayerKVCache
from .masks import AttentionMask
from .moe import build_mlp
from .norms import make_norm


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TowerConfig, layer: int = 0):
        super().__init__()
        norm = lambda: make_norm(cfg.normalization_type, cfg.d_model, cfg.norm_eps, cfg.norm_offset)  # noqa: E731
        self.ln1 = norm()
        self.attn = Attention(cfg)
        self.ln2 = norm()
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
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(
        self,
        resid: torch.Tensor,  # [batch, pos, d_model]
        mask: AttentionMask,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        if self.post_sublayer_norm:  # Swin-style: the sublayer's OUTPUT is normed (hook_attn_out/mlp_out after it)
            attn_out = self.hook_attn_out(self.ln1(self.attn(resid, mask, rotary, kv_cache)))
            resid = self.hook_resid_mid(resid + attn_out)
            return self.hook_resid_post(resid + self.hook_mlp_out(self.ln2(self.mlp(resid))))
        if self.ln1_post is not None:  # sandwich: hook_attn_out / hook_mlp_out are what is added (after ln*_post)
            attn_out = self.hook_attn_out(self.ln1_post(self.attn(self.ln1(resid), mask, rotary, kv_cache)))
            resid = self.hook_resid_mid(resid + attn_out)
            return self.hook_resid_post(resid + self.hook_mlp_out(self.ln2_post(self.mlp(self.ln2(resid)))))
        attn_out = self.hook_attn_out(self._scaled(self.attn(self.ln1(resid), mask, rotary, kv_cache), self.ls1))
        resid = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(self._scaled(self.mlp(self.ln2(resid)), self.ls2))
        return self.hook_resid_post(resid + mlp_out)

    def _scaled(self, out: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
        out = out if gain is None else gain * out
        return out if self.residual_multiplier == 1.0 else out * self.residual_multiplier
