"""A gated MLP into the LM width, then a perceiver resampler: a fixed set of learned latents cross-attends to the
image's patches (Idefics2's connector; projector kind ``"perceiver_resampler"``).

``cfg.extra``: ``d_mlp`` (the MLP's hidden width), ``n_latents``, ``resampler`` (a :class:`TowerConfig` of the
resampler blocks: width, heads, GQA, d_head, MLP width, norm eps; bidirectional, no positions). Each block:
``latents += attn(q = ln1(latents), k/v = [ln_context(context); ln1(latents)])`` (the keys are the patches AND the
latents), then ``latents += mlp(ln2(latents))``; a final norm. Padded patches are masked as keys.

Hooks: ``projector.hook_in`` [image, patch, d_vision], ``projector.mlp.*``, ``projector.hook_context`` [image, patch,
d_model] (what the latents read), ``projector.resampler.blocks.{i}.*`` (``hook_resid_pre/mid/post`` [image, latent,
d_model], ``ln1`` / ``ln_context`` / ``ln2``, ``attn.hook_q`` [image, latent, head, d_head], ``attn.hook_k/v``
[image, patch + latent, kv_head, d_head], ``attn.hook_pattern`` [image, head, latent, patch + latent], ``mlp.*``),
``projector.resampler.ln_final.*``, ``projector.hook_out`` [image, latent, d_model]. The latents are LM tokens that
have no (row, col) on the image (spans: ``latent``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ProjectorConfig, TowerConfig
from ..hook_points import HookPoint
from .attention import Attention
from .masks import AttentionMask
from .mlp import MLP
from .norms import make_norm


class CrossAttention(Attention):
    """Attention whose queries are the latents and whose keys / values are [context; latents] (no positions).

    The fast (SDPA) and explicit paths, ``hook_mask`` and the pattern hooks are :class:`Attention`'s."""

    def forward(self, latents: torch.Tensor, context: torch.Tensor, mask: AttentionMask) -> torch.Tensor:  # type: ignore[override]
        b, n, _ = latents.shape
        cfg = self.cfg
        both = torch.cat([context, latents], dim=1)  # [image, patch + latent, d_model]
        q = self.hook_q(self.q_proj(latents).view(b, n, cfg.n_heads, cfg.d_head))  # [image, latent, head, d_head]
        k = self.hook_k(self.k_proj(both).view(b, both.shape[1], cfg.n_key_value_heads, cfg.d_head))
        v = self.hook_v(self.v_proj(both).view(b, both.shape[1], cfg.n_key_value_heads, cfg.d_head))
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        allowed = None
        if self.hook_mask.fwd_hooks or not mask.is_plain_causal or self._explicit():
            allowed = self.hook_mask(mask.dense(b))  # [image, 1, latent, patch + latent]
        z = self._explicit_attention(qh, kh, vh, allowed) if self._explicit() else self._fast_attention(qh, kh, vh, mask, allowed)
        z = self.hook_z(z.transpose(1, 2))  # [image, latent, head, d_head]
        return self.o_proj(z.reshape(b, n, cfg.n_heads * cfg.d_head))


class PerceiverBlock(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        norm = lambda: make_norm(cfg.normalization_type, cfg.d_model, cfg.norm_eps)  # noqa: E731
        self.ln1, self.ln_context, self.ln2 = norm(), norm(), norm()
        self.attn = CrossAttention(cfg)
        self.mlp = MLP(cfg.d_model, cfg.d_mlp, cfg.act_fn, cfg.gated_mlp, cfg.mlp_bias)
        self.hook_resid_pre = HookPoint()  # [image, latent, d_model]
        self.hook_attn_out = HookPoint()  # [image, latent, d_model]
        self.hook_resid_mid = HookPoint()  # [image, latent, d_model]
        self.hook_mlp_out = HookPoint()  # [image, latent, d_model]
        self.hook_resid_post = HookPoint()  # [image, latent, d_model]

    def forward(self, latents: torch.Tensor, context: torch.Tensor, mask: AttentionMask) -> torch.Tensor:
        latents = self.hook_resid_pre(latents)
        attn_out = self.hook_attn_out(self.attn(self.ln1(latents), self.ln_context(context), mask))
        latents = self.hook_resid_mid(latents + attn_out)
        return self.hook_resid_post(latents + self.hook_mlp_out(self.mlp(self.ln2(latents))))


class Resampler(nn.Module):
    def __init__(self, cfg: TowerConfig, n_latents: int):
        super().__init__()
        if cfg.causal or cfg.positional != "none":
            raise ValueError("the perceiver resampler's tower is bidirectional without positions (causal=False, "
                             f"positional='none'); got causal={cfg.causal}, positional={cfg.positional!r}")
        self.latents = nn.Parameter(torch.zeros(n_latents, cfg.d_model))  # [latent, d_model]
        self.blocks = nn.ModuleList([PerceiverBlock(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = make_norm(cfg.normalization_type, cfg.d_model, cfg.norm_eps)

    def forward(self, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """context [image, patch, d_model], context_mask [image, patch] True at real patches -> [image, latent, d]."""
        n, n_ctx = context.shape[:2]
        n_lat = self.latents.shape[0]
        latents = self.latents.to(context.dtype).expand(n, -1, -1)
        padding = None
        if context_mask is not None and not bool(context_mask.all()):
            padding = torch.cat([context_mask.bool(), torch.ones(n, n_lat, dtype=torch.bool, device=context.device)], 1)
        mask = AttentionMask(causal=False, key_padding=padding, k_len=n_ctx + n_lat,
                             query_positions=torch.arange(n_ctx, n_ctx + n_lat, device=context.device))
        for block in self.blocks:
            latents = block(latents, context, mask)
        return self.ln_final(latents)


class PerceiverResamplerProjector(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        extra = cfg.extra
        self.mlp = MLP(cfg.d_in, int(extra["d_mlp"]), cfg.act_fn, gated=True, bias=cfg.bias, d_out=cfg.d_out)
        self.resampler = Resampler(extra["resampler"], int(extra["n_latents"]))
        self.hook_in = HookPoint()  # [image, patch, d_vision]
        self.hook_context = HookPoint()  # [image, patch, d_model]
        self.hook_out = HookPoint()  # [image, latent, d_model]

    def forward(self, features: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """features [image, patch, d_vision], patch_mask [image, patch] (True = real) -> [image, latent, d_model]."""
        context = self.hook_context(self.mlp(self.hook_in(features)))
        return self.hook_out(self.resampler(context, patch_mask))
