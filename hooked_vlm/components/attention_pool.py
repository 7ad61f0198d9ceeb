"""Attention pooling of patch windows, then a gated MLP (the projector kind ``attention_pool``; HF Molmo2Adapter).

Every output token pools one window of vision features named by a row of ``windows`` ([token, window] indices into
the flattened [crop * patch] features of the whole forward; -1 marks an empty slot). Its query is the mean of the
window's real patches, its keys and values are the window's patches, one attention (GQA: ``n_key_value_heads``) over
the window only; the pooled vector goes through ``o_proj`` and a gated MLP into the language model's width.

Settings (``ProjectorConfig.extra``): ``n_heads``, ``n_key_value_heads``, ``d_head``, ``d_pool`` (o_proj's output
width), ``d_hidden`` (the MLP's), ``attn_bias`` (q / k / v / o biases), ``mlp_bias`` (gate / up biases; down has
none). ``ProjectorConfig.act_fn`` is the MLP's activation.

Hooks (``projector.*``; a token's window axis is ``window``):

    hook_in                [crop, patch, d_in]            the features (the concatenated tower layers)
    hook_query             [token, d_in]                  the mean of each window's real patches
    hook_q                 [token, head, d_head]
    hook_k / hook_v        [token, window, kv_head, d_head]
    hook_attn_scores       [token, head, window]          scaled q.k, empty slots -inf
    hook_pattern           [token, head, window]
    hook_z                 [token, head, d_head]
    hook_pooled            [token, d_pool]                o_proj's output, the MLP's input
    mlp.hook_pre / hook_pre_linear / hook_post   [token, d_hidden]
    hook_out               [token, d_out]                 what reaches the language model
"""

from __future__ import annotations

import einops
import torch
from torch import nn

from ..config import ProjectorConfig
from ..hook_points import HookPoint
from .mlp import MLP


class AttentionPoolProjector(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        x = cfg.extra
        self.n_heads, self.n_kv, self.d_head = int(x["n_heads"]), int(x["n_key_value_heads"]), int(x["d_head"])
        if self.n_heads % self.n_kv:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_key_value_heads={self.n_kv}")
        bias = bool(x["attn_bias"])
        self.q_proj = nn.Linear(cfg.d_in, self.n_heads * self.d_head, bias=bias)  # weight [(head d_head), d_in]
        self.k_proj = nn.Linear(cfg.d_in, self.n_kv * self.d_head, bias=bias)
        self.v_proj = nn.Linear(cfg.d_in, self.n_kv * self.d_head, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.d_head, int(x["d_pool"]), bias=bias)  # weight [d_pool, (head d_head)]
        self.mlp = MLP(int(x["d_pool"]), int(x["d_hidden"]), cfg.act_fn, gated=True, bias=bool(x["mlp_bias"]),
                       out_bias=False, d_out=cfg.d_out)
        self.scale = self.d_head ** -0.5

        self.hook_in = HookPoint()  # [crop, patch, d_in]
        self.hook_query = HookPoint()  # [token, d_in]
        self.hook_q = HookPoint()  # [token, head, d_head]
        self.hook_k = HookPoint()  # [token, window, kv_head, d_head]
        self.hook_v = HookPoint()  # [token, window, kv_head, d_head]
        self.hook_attn_scores = HookPoint()  # [token, head, window]
        self.hook_pattern = HookPoint()  # [token, head, window]
        self.hook_z = HookPoint()  # [token, head, d_head]
        self.hook_pooled = HookPoint()  # [token, d_pool]
        self.hook_out = HookPoint()  # [token, d_out]

    def forward(self, features: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """features [crop, patch, d_in], windows [token, window] (long, -1 = empty slot) -> [token, d_out]."""
        features = self.hook_in(features)
        flat = einops.rearrange(features, "crop patch d -> (crop patch) d")
        windows = windows.to(flat.device).long()
        if windows.ndim != 2 or bool((windows >= flat.shape[0]).any()) or bool((windows < -1).any()):
            raise ValueError(f"the pooling windows (shape {tuple(windows.shape)}) must be [token, window] indices into "
                             f"the {flat.shape[0]} patches of the forward's crops, -1 for an empty slot")
        real = windows >= 0  # [token, window]
        if not bool(real.any(-1).all()):
            raise ValueError("a pooling window holds no patch (all -1): the processor never makes one, and HF drops "
                             "its token, which then has no placeholder; rebuild the inputs with the processor")
        patches = flat[windows.clamp(min=0)] * real[..., None].to(flat.dtype)  # [token, window, d_in]
        query = self.hook_query(patches.sum(1) / real.sum(-1, keepdim=True).to(flat.dtype))
        q = self.hook_q(einops.rearrange(self.q_proj(query), "t (h d) -> t h d", d=self.d_head))
        k = self.hook_k(einops.rearrange(self.k_proj(patches), "t w (h d) -> t w h d", d=self.d_head))
        v = self.hook_v(einops.rearrange(self.v_proj(patches), "t w (h d) -> t w h d", d=self.d_head))
        group = self.n_heads // self.n_kv  # each kv head serves `group` consecutive query heads (HF's repeat_kv)
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
        scores = torch.einsum("thd,twhd->thw", q, k) * self.scale
        scores = self.hook_attn_scores(scores.masked_fill(~real[:, None, :], float("-inf")))
        pattern = self.hook_pattern(scores.softmax(-1))
        z = self.hook_z(torch.einsum("thw,twhd->thd", pattern, v))
        pooled = self.hook_pooled(self.o_proj(einops.rearrange(z, "t h d -> t (h d)")))
        return self.hook_out(self.mlp(pooled))
