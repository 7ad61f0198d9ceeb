"""VQ image tokenizer: the family's own HF VQ-VAE (a frozen conv net) + code -> LM token mapping.

``vision.hook_codes`` holds the LM token ids of every image, [n_images, n_tokens], row-major. With a
row-break token (Emu3) each row of codes is followed by it, so n_tokens = rows * (cols + 1); when the
images of a batch differ in size the grid is that of the padded pixel batch and cells outside an
image are -1 (an image's tokens are its entries >= 0, in order). A hook on ``vision.hook_codes`` may
replace the ids (e.g. by another image's): the LM then embeds the replaced ids.
"""

from __future__ import annotations

import importlib

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..config import VQConfig
from ..hook_points import HookPoint


def _import(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


class VQTokenizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        hf_config = _import(cfg.hf_config_class)(**cfg.hf_config)
        self.vq = _import(cfg.hf_class)(hf_config).eval()  # parameters are loaded from the checkpoint
        self.register_buffer("code_to_token", torch.tensor(cfg.code_to_token, dtype=torch.long), persistent=False)
        self.hook_codes = HookPoint()  # [n_images, n_tokens] LM token ids (row breaks included; -1 = outside the image)

    def reset_buffers(self) -> None:
        """Rebuild the code -> token table (after materialising the model from the meta device)."""
        self.code_to_token = torch.tensor(self.cfg.code_to_token, dtype=torch.long, device=self.code_to_token.device)

    def check_pixels(self, pixel_values: Tensor, image_sizes: Tensor | None = None) -> None:
        f = self.cfg.downsample
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.vq.config.in_channels:
            raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}; the VQ tokenizer expects "
                             f"[n_images, {self.vq.config.in_channels}, height, width]")
        sizes = [tuple(pixel_values.shape[2:])] if image_sizes is None else [tuple(s) for s in image_sizes.tolist()]
        for h, w in sizes:
            if h % f or w % f or h <= 0 or w <= 0:
                raise ValueError(
                    f"an image of {h}x{w} pixels cannot be tiled by this VQ tokenizer: height and width must be "
                    f"positive multiples of {f} (one code per {f}x{f} pixels). Resize it with the checkpoint's "
                    "image processor (model.prepare_inputs)."
                )

    @torch.no_grad()
    def encode_codes(self, pixel_values: Float[Tensor, "image channel height width"]) -> Int[Tensor, "image rows cols"]:
        """Raw VQ codes of the (padded) pixel batch."""
        n, _, h, w = pixel_values.shape
        f = self.cfg.downsample
        px = pixel_values.to(self.vq.dtype)
        if self.cfg.encode == "indices":
            codes = self.vq.encode(px, return_dict=True).image_tokens
        elif self.cfg.encode == "sized":
            full = torch.tensor([[h, w]] * n, device=px.device)
            codes = torch.stack(list(self.vq.encode(px, full, return_dict=True).image_tokens))
        else:
            raise ValueError(f"unknown VQ encode mode {self.cfg.encode!r}; known: 'indices', 'sized'")
        return codes.reshape(n, h // f, w // f).long()

    def forward(self, pixel_values: Tensor, image_sizes: Tensor | None = None) -> tuple[Tensor, list[tuple[int, int]]]:
        """-> (LM token ids [n_images, n_tokens] as hooked, (rows, cols) of each image's code grid)."""
        self.check_pixels(pixel_values, image_sizes)
        f = self.cfg.downsample
        codes = self.encode_codes(pixel_values)
        tokens = self.code_to_token[codes]  # [image, rows, cols]
        n, rows, cols = tokens.shape
        sizes = [(rows, cols)] * n if image_sizes is None else [(int(h) // f, int(w) // f) for h, w in image_sizes.tolist()]
        brk = self.cfg.row_break_token_id
        if brk is not None:
            tokens = torch.cat([tokens, torch.full((n, rows, 1), -1, dtype=tokens.dtype, device=tokens.device)], -1)
        for i, (r, c) in enumerate(sizes):
            if r > rows or c > cols:
                raise ValueError(f"image_sizes[{i}] = {r * f}x{c * f} exceeds the pixel batch ({rows * f}x{cols * f})")
            keep = torch.zeros_like(tokens[i], dtype=torch.bool)
            keep[:r, :c] = True
            if brk is not None:
                tokens[i, :r, c] = brk
                keep[:r, c] = True
            tokens[i] = tokens[i].masked_fill(~keep, -1)
        return self.hook_codes(tokens.reshape(n, -1)), sizes
