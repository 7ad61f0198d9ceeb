"""Cross-attention token mixer (``cross_attention`` layers, Mllama): the image lives only in the keys.

Queries come from the text stream (the block's normed residual), keys and values from the projected image features
(``[batch, key, d_model]``, the key axis = image, tile, patch in the vision tower's order). The keys and values are
computed once, on the forward that brings the images, and kept in the layer's :class:`CrossKV` state (as HF caches
them); later forwards (decode steps) reuse them.

The mask: ``CrossKV.allowed`` bool [batch, q_pos, key] from the model's ``cross_attention_mask`` input (None = every
key). With ``CrossAttentionConfig.empty_rows_attend_all`` (HF Mllama), a text row whose mask allows no key attends to
EVERY key and the block zeroes its MLP output (``CrossKV.row_has_image``); ``hook_mask`` shows the mask attention
really uses (after that rule), so editing it knocks out edges exactly: a row left with no allowed key outputs zeros.

Fast path: SDPA (no [q, key] matrix) unless hook_attn_scores / hook_pattern are hooked (explicit path), as in
:mod:`.attention`, whose two paths this class reuses.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..config import TowerConfig
from ..hook_points import HookPoint
from .attention import Attention, _mask_shape_ok
from .masks import AttentionMask
from .mixers import register_mixer


class CrossKV:
    """One cross-attention layer's state: image keys / values (computed once) and the mask of the current forward.

    ``images`` [batch, key, d_model]: the projected image features of this forward (None when the keys are cached);
    ``k`` / ``v`` [batch, key, kv_head, d_head]: the keys / values (after k norm), kept for later forwards;
    ``allowed`` bool [batch, q_pos, key] or None (every key): the input mask of this forward's queries;
    ``last_row`` bool [batch, key] or None: the last mask row seen (a decode step without a mask repeats it, as HF's
    generate does); ``row_has_image`` bool [batch, q_pos] or None: rows whose input mask allows some key."""

    def __init__(self) -> None:
        self.images: torch.Tensor | None = None
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.allowed: torch.Tensor | None = None
        self.last_row: torch.Tensor | None = None
        self.row_has_image: torch.Tensor | None = None

    @property
    def has_keys(self) -> bool:
        """True when this layer has images to attend to (given in this forward or cached); HF skips the layer else."""
        return self.images is not None or self.k is not None

    @property
    def length(self) -> int:
        return 0 if self.k is None else int(self.k.shape[1])

    def begin(self, images: torch.Tensor | None, allowed: torch.Tensor | None, q_len: int) -> None:
        """Set this forward's inputs: new image features (or None), the input mask rows of the queries (or None: the
        last row seen is repeated, or every key when none was ever given)."""
        if images is not None and self.k is not None:
            raise ValueError("this KV cache already holds the keys of the prompt's images; a later forward cannot "
                             "bring new pixel_values (start a new cache: KVCache(model.cfg))")
        self.images = images
        if allowed is None and self.last_row is not None:
            allowed = self.last_row[:, None].expand(-1, q_len, -1)
        self.allowed = allowed
        if allowed is not None:
            self.last_row = allowed[:, -1]


class CrossAttention(Attention):
    """GQA cross-attention over image keys; q / k norms per head from ``CrossAttentionConfig.qk_norm``."""

    def __init__(self, cfg: TowerConfig):
        ca = cfg.cross_attention
        # the self-attention machinery (projections, q/k norms, both paths) on the cross-attention's own sizes;
        # positional="none": keys are image features, no RoPE (no hook_rot_q / hook_rot_k)
        inner = dataclasses.replace(cfg, n_heads=ca.n_heads, n_key_value_heads=ca.n_key_value_heads, d_head=ca.d_head,
                                    qk_norm=ca.qk_norm, qk_norm_eps=ca.qk_norm_eps, qk_norm_per_head=False,
                                    qk_norm_scope="head", attn_bias=ca.attn_bias, attn_out_bias=ca.attn_bias,
                                    positional="none", attn_logit_softcap=None, attn_scale=None, norm_offset=0.0,
                                    layer_types=None, layer_rope_parameters=None, sliding_window=None,
                                    attn_output_gate=False)
        super().__init__(inner)
        self.empty_rows_attend_all = ca.empty_rows_attend_all
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, key, kv_head, d_head]  over the image key axis (before k_norm)
        self.hook_v = HookPoint()  # [batch, key, kv_head, d_head]
        self.hook_mask = HookPoint(_mask_shape_ok, "a bool mask [batch, 1 or head, q, key] like")  # [batch, 1, q_pos, key]
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, key]
        self.hook_pattern = HookPoint()  # [batch, head, q_pos, key]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]

    def forward(
        self,
        x: torch.Tensor,  # [batch, pos, d_model]
        mask: AttentionMask,  # the text mask; unused (the cross-attention mask is the state's)
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,  # unused: no RoPE on image keys
        kv_cache: CrossKV | None = None,
    ) -> torch.Tensor:
        state = kv_cache
        if state is None or not state.has_keys:
            raise ValueError("a cross-attention layer ran without image keys; the model skips these layers when the "
                             "forward has no pixel_values and its cache holds no images")
        b, q_len, _ = x.shape
        cfg = self.cfg
        q = self.hook_q(self.q_proj(x).view(b, q_len, cfg.n_heads, cfg.d_head))
        if self.q_norm is not None:
            q = self.q_norm(q)
        if state.images is not None:  # the forward that brings the images: keys / values computed once, then cached
            img = state.images
            k = self.hook_k(self.k_proj(img).view(b, img.shape[1], cfg.n_key_value_heads, cfg.d_head))
            v = self.hook_v(self.v_proj(img).view(b, img.shape[1], cfg.n_key_value_heads, cfg.d_head))
            if self.k_norm is not None:
                k = self.k_norm(k)
            state.k, state.v = k, v
        k, v = state.k, state.v
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [batch, head, pos|key, d_head]

        allowed = None
        if state.allowed is not None:
            given = state.allowed.to(x.device)  # [batch, q_pos, key]
            has_image = given.any(-1)  # [batch, q_pos]
            state.row_has_image = has_image if self.empty_rows_attend_all else None  # the block zeroes the MLP there
            if self.empty_rows_attend_all:  # HF: a row that may see no image key attends to every key
                given = given | ~has_image[..., None]
            allowed = given[:, None]  # [batch, 1, q_pos, key]
        else:
            state.row_has_image = None
        if self.hook_mask.fwd_hooks or self._explicit():
            if allowed is None:
                allowed = torch.ones(b, 1, q_len, k.shape[1], dtype=torch.bool, device=x.device)
            allowed = self.hook_mask(allowed)
        if self._explicit():
            z = self._explicit_attention(qh, kh, vh, allowed)
        else:
            # no causal structure over image keys: SDPA without is_causal (with the mask when there is one)
            keys = AttentionMask(causal=False, key_padding=None, k_len=k.shape[1],
                                 query_positions=torch.arange(q_len, device=x.device))
            z = self._fast_attention(qh, kh, vh, keys, allowed)
        z = self.hook_z(z.transpose(1, 2))  # [batch, pos, head, d_head]
        return self.o_proj(z.reshape(b, q_len, cfg.n_heads * cfg.d_head))


def _cross_attention(cfg: TowerConfig, layer: int) -> nn.Module:
    return CrossAttention(cfg)


# attention=False: its pattern is over image KEYS, not positions, so the position analyses (knockout, flow,
# patch_attribution) skip these layers; hooked_vlm.analysis.cross_attention reads them
register_mixer("cross_attention", "cross_attn", _cross_attention, CrossKV, attention=False)
