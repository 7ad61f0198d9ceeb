"""Pixel-shuffle connectors: scale x scale patches -> one token, then a linear map or a normed two-layer MLP.

``extra["scale_factor"]``: patches folded per side. A square grid of ``side x side`` patches becomes ``side / scale``
squared tokens, row-major, each the concatenation of a ``scale x scale`` block (HF's exact order: Idefics3's
connector and InternVL's ``pixel_shuffle`` with ``downsample_ratio = 1 / scale`` give the same layout).
``extra["mlp"]`` (default False): False = one linear map ``proj`` (Idefics3 / SmolVLM); True = ``ln`` (a LayerNorm of
the shuffled features, eps ``extra["norm_eps"]``) -> ``linear_1`` -> activation -> ``linear_2`` (InternVL);
``"swiglu"`` = optional ``ln`` (``extra["norm"]``, default True) -> ``linear_1`` to ``extra["d_hidden"]`` -> its two
halves ``(x, gate)`` -> ``act(gate) * x`` -> ``linear_2`` from ``d_hidden / 2`` (Aya Vision with the norm, Cohere2
Vision without; HF's ``hidden_states.chunk(2, dim=-1)`` order: the FIRST half is x, the second the gate);
``"adapter"`` = ``linear_1`` to ``extra["d_hidden"]`` -> activation -> ``linear_2`` (d_hidden -> d_hidden) -> activation
(``hook_adapter_out``) -> ``proj`` to d_out, no norm (Llama 4's vision_adapter then multi_modal_projector).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..config import ProjectorConfig
from ..hook_points import HookPoint
from .norms import LayerNorm


def pixel_shuffle(x: torch.Tensor, scale: int) -> torch.Tensor:
    """[image, side * side, d] -> [image, (side / scale)**2, d * scale**2] (HF Idefics3Connector.pixel_shuffle)."""
    n, seq, d = x.shape
    side = int(seq**0.5)
    if side * side != seq or side % scale:
        raise ValueError(f"pixel shuffle needs a square patch grid divisible by {scale}; got {seq} patches")
    x = x.reshape(n, side, side // scale, d * scale)
    x = x.permute(0, 2, 1, 3).reshape(n, side // scale, side // scale, d * scale**2)
    return x.permute(0, 2, 1, 3).reshape(n, seq // scale**2, d * scale**2)


class PixelShuffleProjector(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.scale = cfg.extra["scale_factor"]
        d_shuffled = cfg.d_in * self.scale**2
        mlp = cfg.extra.get("mlp", False)
        if mlp not in (False, True, "swiglu", "adapter"):
            raise ValueError(f"pixel_shuffle projector: extra['mlp'] must be False, True, 'swiglu' or 'adapter', got "
                             f"{mlp!r}")
        self.mlp, self.swiglu, self.adapter = bool(mlp), mlp == "swiglu", mlp == "adapter"
        if self.adapter:
            d_hidden = cfg.extra["d_hidden"]
            self.linear_1 = nn.Linear(d_shuffled, d_hidden, bias=cfg.bias)
            self.act = ACT2FN[cfg.act_fn]
            self.linear_2 = nn.Linear(d_hidden, d_hidden, bias=cfg.bias)
            self.proj = nn.Linear(d_hidden, cfg.d_out, bias=cfg.bias)
            self.hook_adapter_out = HookPoint()  # [image, image_token, d_hidden]
        elif self.swiglu:
            d_hidden = cfg.extra["d_hidden"]
            if d_hidden % 2:
                raise ValueError(f"pixel_shuffle projector: a SwiGLU's d_hidden={d_hidden} must be even (two halves)")
            self.ln = LayerNorm(d_shuffled, cfg.extra.get("norm_eps", 1e-5)) if cfg.extra.get("norm", True) else None
            self.linear_1 = nn.Linear(d_shuffled, d_hidden, bias=cfg.bias)
            self.act = ACT2FN[cfg.act_fn]
            self.linear_2 = nn.Linear(d_hidden // 2, cfg.d_out, bias=cfg.bias)
        elif self.mlp:
            self.ln = LayerNorm(d_shuffled, cfg.extra.get("norm_eps", 1e-5))
            self.linear_1 = nn.Linear(d_shuffled, cfg.d_out, bias=cfg.bias)
            self.act = ACT2FN[cfg.act_fn]
            self.linear_2 = nn.Linear(cfg.d_out, cfg.d_out, bias=cfg.bias)
        else:
            self.proj = nn.Linear(d_shuffled, cfg.d_out, bias=cfg.bias)
        self.hook_in = HookPoint()  # [image, patch, d_vision]
        self.hook_out = HookPoint()  # [image, image_token, d_model]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = pixel_shuffle(self.hook_in(features), self.scale)  # [image, image_token, d_vision * scale**2]
        if self.adapter:
            x = self.hook_adapter_out(self.act(self.linear_2(self.act(self.linear_1(x)))))
            return self.hook_out(self.proj(x))
        if self.swiglu:
            x, gate = self.linear_1(x if self.ln is None else self.ln(x)).chunk(2, dim=-1)
            return self.hook_out(self.linear_2(self.act(gate) * x))
        if self.mlp:
            return self.hook_out(self.linear_2(self.act(self.linear_1(self.ln(x)))))
        return self.hook_out(self.proj(x))
