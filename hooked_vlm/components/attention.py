"""Multi-head attention with GQA, optional RoPE and q/k norm, and two numerically equal paths.

Fast path: ``F.scaled_dot_product_attention`` (no [q, k] matrix) -- used unless something hooks
``hook_attn_scores`` or ``hook_pattern``. Explicit path: scores -> softmax -> pattern, each hooked.
``hook_mask`` (bool [batch, 1 or head, q, k], True = may attend) is materialised only when a hook
is on it; hooks on it (e.g. attention knockout) therefore work on the fast path too.
With ``cfg.attn_logit_softcap`` set (Gemma 2) every forward takes the explicit path (SDPA cannot soft-cap):
scores = tanh(scores / cap) * cap, then the mask; ``hook_attn_scores`` shows the capped, masked scores.
With ``cfg.attn_output_gate`` (Qwen3.5) q_proj also makes a gate per head (the checkpoint's layout: each head's q rows,
then its gate rows); ``hook_gate`` shows it before the sigmoid and ``hook_z`` is the gated output o_proj reads
(pattern @ v times sigmoid(gate)), so per-head decompositions through W_O stay exact.
Partial rotary (``cfg.rotary_dim`` < d_head) turns the first rotary_dim channels of each head (components/rope.py).
Gemma 4: ``k_eq_v`` layers have no v_proj (v is k_proj's output, taken before hook_k, so hook_k edits keys only and
hook_v values only); ``cfg.v_norm`` normalises each value head (weightless RMS) after hook_v; a KV-sharing layer
(``shares_kv``) has no k / v projections or hooks: its state is the source layer's LayerKVCache, whose keys (after
the source's norm and RoPE) and values it reads, so an edit at the source's hook_k / hook_v reaches it too.
HunYuan: ``cfg.qk_norm_after_rope`` moves the q / k norms (``cfg.qk_norm``) after RoPE (``q_norm.hook_normalized`` then
reads the rotated heads; ``hook_rot_q`` / ``hook_rot_k`` come first).
Llama 4: ``cfg.qk_l2_norm_after_rope`` divides each rotated head of q and k by its RMS (no weight; rotary layers only;
``hook_l2_q`` / ``hook_l2_k``); ``cfg.attn_temperature_floor`` multiplies the queries of NoPE layers by a factor growing
with the absolute position (``hook_q_temperature`` [batch, pos]), as HF's Llama4TextAttention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TowerConfig
from ..hook_points import HookPoint
from .masks import AttentionMask
from .norms import UnitRMSNorm
from .qk_norm import make_qk_norms
from .rope import apply_rotary


_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def _mask_shape_ok(new: torch.Tensor, old: torch.Tensor) -> bool:
    return new.dtype == torch.bool and new.ndim == 4 and new.shape[0] == old.shape[0] and new.shape[2:] == old.shape[2:]


class Attention(nn.Module):
    def __init__(self, cfg: TowerConfig, use_rope: bool = True, k_eq_v: bool = False, shares_kv: bool = False):
        """``use_rope=False``: this layer never rotates q / k (a NoPE layer of a RoPE tower, ``cfg.layer_uses_rope``),
        so it has no hook_rot_q / hook_rot_k. ``k_eq_v``: values are the key projection (no v_proj). ``shares_kv``:
        keys and values come from another layer's cache state (no k / v projections, norms or hooks)."""
        super().__init__()
        self.cfg = cfg
        self.use_rope = use_rope
        self.shares_kv = shares_kv
        h, kvh, dh, d = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_model
        self.gated = cfg.attn_output_gate
        # weight [(head d_head), d_model]; gated: [(head (q|gate) d_head), d_model]
        self.q_proj = nn.Linear(d, h * dh * (2 if self.gated else 1), bias=cfg.attn_bias)
        self.k_proj = None if shares_kv else nn.Linear(d, kvh * dh, bias=cfg.attn_bias)
        self.v_proj = None if shares_kv or k_eq_v else nn.Linear(d, kvh * dh, bias=cfg.attn_bias)
        self.o_proj = nn.Linear(h * dh, d, bias=cfg.attn_out_bias)  # weight [d_model, (head d_head)]
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else dh**-0.5
        self.q_norm, self.k_norm = make_qk_norms(cfg)  # None unless cfg.qk_norm
        self.v_norm = UnitRMSNorm(cfg.norm_eps) if cfg.v_norm and not shares_kv else None
        if shares_kv:
            self.k_norm = None

        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        if not shares_kv:
            self.hook_k = HookPoint()  # [batch, pos, kv_head, d_head]
            self.hook_v = HookPoint()  # [batch, pos, kv_head, d_head]
        if use_rope and cfg.positional not in ("learned", "none"):  # rotary layers only: hooks that never fire do not exist
            self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head]
            if not shares_kv:
                self.hook_rot_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_mask = HookPoint(_mask_shape_ok, "a bool mask [batch, 1 or head, q, k] like")  # [batch, 1, q_pos, k_pos]
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_pattern = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        if self.gated:
            self.hook_gate = HookPoint()  # [batch, pos, head, d_head]  output gate before the sigmoid
        # Llama 4: L2 q/k norm after RoPE on rotary layers; temperature-tuned queries on NoPE layers
        self.l2_qk = cfg.qk_l2_norm_after_rope and use_rope and cfg.positional not in ("learned", "none")
        if self.l2_qk:
            self.hook_l2_q = HookPoint()  # [batch, pos, head, d_head]  q / rms(q) over d_head, after RoPE
            self.hook_l2_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.temperature = cfg.attn_temperature_floor is not None and not use_rope
        if self.temperature:
            self.hook_q_temperature = HookPoint()  # [batch, pos]  the factor each query's q is multiplied by

    # --- TransformerLens weight views (views of the stored weights, not copies) ---
    @property
    def W_Q(self) -> torch.Tensor:  # [head, d_model, d_head]
        w = self.q_proj.weight.view(self.cfg.n_heads, -1, self.cfg.d_model)[:, : self.cfg.d_head]  # gated: q rows only
        return w.transpose(1, 2)

    @property
    def W_K(self) -> torch.Tensor:  # [kv_head, d_model, d_head]
        if self.k_proj is None:
            raise AttributeError("this layer shares another layer's keys and values (KV sharing): it has no W_K / W_V; "
                                 "read the source layer's (TowerConfig.kv_source)")
        return self.k_proj.weight.view(self.cfg.n_key_value_heads, self.cfg.d_head, -1).transpose(1, 2)

    @property
    def W_V(self) -> torch.Tensor:  # [kv_head, d_model, d_head]
        if self.k_proj is None:
            return self.W_K  # raises
        return (self.v_proj if self.v_proj is not None else self.k_proj).weight.view(self.cfg.n_key_value_heads, self.cfg.d_head, -1).transpose(1, 2)

    @property
    def W_O(self) -> torch.Tensor:  # [head, d_head, d_model]
        return self.o_proj.weight.view(-1, self.cfg.n_heads, self.cfg.d_head).permute(1, 2, 0)

    @property
    def b_O(self) -> torch.Tensor:
        return self.o_proj.bias if self.o_proj.bias is not None else torch.zeros(self.cfg.d_model, device=self.o_proj.weight.device)

    def _explicit(self) -> bool:
        return self.cfg.attn_logit_softcap is not None or bool(self.hook_attn_scores.fwd_hooks or self.hook_pattern.fwd_hooks)

    def forward(
        self,
        x: torch.Tensor,  # [batch, pos, d_model]
        mask: AttentionMask,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,  # cos, sin [batch, pos, 1, d_head]
        kv_cache: "LayerKVCache | None" = None,
    ) -> torch.Tensor:
        b, q_len, _ = x.shape
        cfg = self.cfg
        gate = None
        if self.gated:
            q, gate = self.q_proj(x).view(b, q_len, cfg.n_heads, 2 * cfg.d_head).chunk(2, dim=-1)
            gate = self.hook_gate(gate)
        else:
            q = self.q_proj(x).view(b, q_len, cfg.n_heads, cfg.d_head)
        q = self.hook_q(q)
        k = v = None
        if not self.shares_kv:  # hooks fire in the order q, k, v, then the norms, then RoPE
            k_raw = self.k_proj(x).view(b, q_len, cfg.n_key_value_heads, cfg.d_head)
            v_raw = k_raw if self.v_proj is None else self.v_proj(x).view(b, q_len, cfg.n_key_value_heads, cfg.d_head)
            k, v = self.hook_k(k_raw), self.hook_v(v_raw)
        if not cfg.qk_norm_after_rope:
            q, k = self._qk_norms(q, k)
        if self.v_norm is not None:
            v = self.v_norm(v)
        rotate = rotary is not None and self.use_rope  # a NoPE layer ignores a table handed to every layer (memory.py)
        if rotate:
            cos, sin = rotary
            q = self.hook_rot_q(apply_rotary(q, cos, sin, cfg.rope_interleaved, cfg.rope_axes))
            if k is not None:
                k = self.hook_rot_k(apply_rotary(k, cos, sin, cfg.rope_interleaved, cfg.rope_axes))
        if cfg.qk_norm_after_rope:  # HunYuan: the q / k norms read the rotated heads
            q, k = self._qk_norms(q, k)
        if self.l2_qk:  # HF Llama4TextL2Norm: x * rsqrt(mean(x^2) + eps) in float32, no weight
            q = self.hook_l2_q(_l2_norm(q, cfg.norm_eps))
            if k is not None:
                k = self.hook_l2_k(_l2_norm(k, cfg.norm_eps))
        if self.temperature:  # HF Llama4TextAttention: log1p(floor((p + 1) / floor_scale)) * attn_scale + 1
            p = mask.query_positions.to(torch.float32)
            factor = torch.log1p(torch.floor((p + 1.0) / cfg.attn_temperature_floor)) * cfg.attn_temperature_scale + 1.0
            factor = self.hook_q_temperature(factor[None, :].expand(b, -1))
            q = (q * factor[:, :, None, None]).to(q.dtype)
        if self.shares_kv:  # the source layer's keys / values of every position so far (its state; no copy)
            if kv_cache is None or kv_cache.k is None:
                raise ValueError("a KV-sharing layer needs its source layer's state (HookedVLM.forward passes it)")
            k, v = kv_cache.k, kv_cache.v
        elif kv_cache is not None:
            k, v = kv_cache.append(k, v)

        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [batch, head, pos, d_head]
        allowed = None
        if self.hook_mask.fwd_hooks or not mask.is_plain_causal or self._explicit():
            # unhooked: one dense mask per forward, shared by the layers (a hook gets its own copy to edit)
            allowed = self.hook_mask(mask.dense(b, memo=not self.hook_mask.fwd_hooks))

        if self._explicit():
            z = self._explicit_attention(qh, kh, vh, allowed)
        else:
            z = self._fast_attention(qh, kh, vh, mask, allowed)
        z = z.transpose(1, 2)  # [batch, pos, head, d_head]
        if gate is not None:
            z = z * torch.sigmoid(gate)
        z = self.hook_z(z)
        return self.o_proj(z.reshape(b, q_len, cfg.n_heads * cfg.d_head))

    def _qk_norms(self, q: torch.Tensor, k: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q / k through their per-head norms (those that exist); before RoPE, or after it (cfg.qk_norm_after_rope)."""
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None and k is not None:
            k = self.k_norm(k)
        return q, k

    def _fast_attention(self, q, k, v, mask: AttentionMask, allowed: torch.Tensor | None) -> torch.Tensor:
        kwargs = {}
        if self.cfg.n_heads != self.cfg.n_key_value_heads:
            if _SDPA_HAS_GQA:
                kwargs["enable_gqa"] = True
            else:
                n_rep = self.cfg.n_heads // self.cfg.n_key_value_heads
                k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        if allowed is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=mask.sdpa_is_causal(), scale=self.scale, **kwargs)
        memo = getattr(mask, "_memo", None)
        if memo is not None and memo.get("dense") is allowed:  # the forward's shared mask: derive its parts once
            if memo.get("sdpa") is None or memo["sdpa"].dtype != q.dtype:
                memo["sdpa"] = torch.zeros(allowed.shape, dtype=q.dtype, device=allowed.device).masked_fill_(
                    ~allowed, float("-inf"))  # additive: SDPA would convert a bool mask on every call
                memo["dead"] = ~allowed.any(-1, keepdim=True)
                memo["any_dead"] = allowed.is_meta or bool(memo["dead"].any())  # (meta: shapes only, no values)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=memo["sdpa"], scale=self.scale, **kwargs)
            return out.masked_fill(memo["dead"], 0.0) if memo["any_dead"] else out
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=self.scale, **kwargs)
        # queries that may attend to nothing (left padding, knockouts) output zeros on every torch version
        return out.masked_fill(~allowed.any(-1, keepdim=True), 0.0)

    def _explicit_attention(self, q, k, v, allowed: torch.Tensor) -> torch.Tensor:
        n_rep = self.cfg.n_heads // self.cfg.n_key_value_heads
        if n_rep > 1:
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        buffers = self.hook_attn_scores.run.extra.get("cache_buffers")  # reuse the last cache's [q, k] tensors
        if q.requires_grad or k.requires_grad:  # out= ops cannot record autograd: fresh tensors when grads flow
            buffers = None
        shape = (*q.shape[:-1], k.shape[-2])
        out = buffers.take(self.hook_attn_scores.name, shape, q.dtype, q.device) if buffers is not None else None
        scores = torch.matmul(q, k.transpose(-1, -2), out=out).mul_(self.scale)
        cap = self.cfg.attn_logit_softcap
        if cap is not None:  # HF Gemma 2 order: scale, cap, then the mask
            scores = torch.tanh(scores / cap) * cap
        scores = scores.masked_fill_(~allowed, float("-inf"))
        version = scores._version
        hooked = self.hook_attn_scores(scores)
        if hooked is scores and scores._version == version:
            # untouched by hooks: a query attends to nothing exactly where the mask allows nothing (the masked
            # scores' row maximum is -inf there; q.k at allowed keys is finite for finite q, k)
            dead = ~allowed.any(-1, keepdim=True)
        else:
            dead = hooked.amax(-1, keepdim=True) == float("-inf")  # queries that may attend to nothing: zeros, not NaN
        scores = hooked
        out = buffers.take(self.hook_pattern.name, scores.shape, scores.dtype, scores.device) \
            if buffers is not None and scores.dtype == torch.float32 and q.dtype == torch.float32 else None
        if out is not None:
            pattern = torch.ops.aten._softmax.out(scores, -1, False, out=out)  # what torch.softmax(float32) runs
        else:
            pattern = torch.softmax(scores, dim=-1, dtype=torch.float32)
        if bool(dead.any()):
            pattern = pattern.masked_fill_(dead, 0.0)
        pattern = self.hook_pattern(pattern.to(q.dtype))
        return torch.matmul(pattern, v)


def _l2_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Each head's vector divided by its root mean square over d_head (float32, cast back)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


class LayerKVCache:
    """Keys and values of the positions seen so far, for one layer. [batch, pos, kv_head, d_head]."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=1)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=1)
        return self.k, self.v

    @property
    def length(self) -> int:
        return 0 if self.k is None else int(self.k.shape[1])
