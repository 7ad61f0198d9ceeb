"""Pixel-unshuffle connector for variable-size images (LFM2-VL): every image's ``rows x cols`` patch grid is folded
``factor x factor`` -> one token, then an optional LayerNorm and a two-layer MLP.

``extra["factor"]``: patches folded per side (HF ``downsample_factor``); ``extra["layer_norm"]`` (bool): a LayerNorm
``ln`` over the folded features (eps ``extra["norm_eps"]``, torch's default 1e-5 in HF); ``extra["d_hidden"]``: the
MLP's hidden width (HF ``projector_hidden_size``). A token's features are its block's patches concatenated in the
order (row offset, col offset) -- HF ``Lfm2VlMultiModalProjector.pixel_unshuffle`` exactly, which on a square grid is
the Idefics3 / InternVL pixel shuffle of :mod:`.pixel_shuffle`. Tokens are row-major over the ``rows / factor x
cols / factor`` grid.

Hooks: ``projector.hook_in`` [image, patch, d_vision] (the tower's padded output), ``projector.hook_out``
[image, token, d_model] padded to the largest image's token count (rows past an image's own count are padding:
the pipeline drops them).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from transformers.activations import ACT2FN

from ..config import ProjectorConfig
from ..hook_points import HookPoint
from .norms import LayerNorm


def unshuffle_grid(x: torch.Tensor, factor: int) -> torch.Tensor:
    """[rows, cols, d] -> [(rows / f) * (cols / f), f * f * d]: feature index (dr * f + dc) * d + channel."""
    rows, cols, _ = x.shape
    if rows % factor or cols % factor:
        raise ValueError(f"pixel unshuffle needs a patch grid divisible by {factor}; got {rows} x {cols} patches "
                         "(the LFM2-VL image processor resizes images to multiples of patch_size * downsample_factor)")
    return rearrange(x, "(r dr) (c dc) d -> (r c) (dr dc d)", dr=factor, dc=factor)


class PixelUnshuffleProjector(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.factor = int(cfg.extra["factor"])
        d_folded = cfg.d_in * self.factor**2
        self.ln = LayerNorm(d_folded, cfg.extra.get("norm_eps", 1e-5)) if cfg.extra.get("layer_norm") else None
        self.linear_1 = nn.Linear(d_folded, cfg.extra["d_hidden"], bias=cfg.bias)
        self.act = ACT2FN[cfg.act_fn]
        self.linear_2 = nn.Linear(cfg.extra["d_hidden"], cfg.d_out, bias=cfg.bias)
        self.hook_in = HookPoint()  # [image, patch, d_vision]
        self.hook_out = HookPoint()  # [image, token, d_model] (padded to the most tokens of any image)

    def tokens_per_image(self, spatial_shapes: torch.Tensor) -> list[int]:
        return [(r // self.factor) * (c // self.factor) for r, c in spatial_shapes.tolist()]

    def forward(self, features: torch.Tensor, spatial_shapes: torch.Tensor) -> torch.Tensor:
        """features [image, patch, d_vision] (real patches first, row-major), spatial_shapes [image, 2] (rows, cols)."""
        features = self.hook_in(features)
        folded = [unshuffle_grid(features[i, : r * c].reshape(r, c, -1), self.factor)
                  for i, (r, c) in enumerate(spatial_shapes.tolist())]
        x = nn.utils.rnn.pad_sequence(folded, batch_first=True)  # [image, token, d_vision * factor**2]
        if self.ln is not None:
            x = self.ln(x)
        return self.hook_out(self.linear_2(self.act(self.linear_1(x))))
