"""Fit the toy native model's image tokenizer: a Chameleon VQ encoder trained as a patch autoencoder,
then a k-means codebook on its latents.

HF's ``ChameleonVQVAE`` has an encoder, a 1x1 ``quant_conv`` and a nearest-neighbour quantiser (no
decoder). Fitting it here takes two steps:

1. the encoder + ``quant_conv`` are trained with a throwaway per-cell linear decoder that must
   rebuild each 8x8 patch from the latent of its own grid cell (so a code describes its own patch:
   colour, and which part of the patch the object covers);
2. ``quantize.embedding`` (the codebook) is set to k-means centroids of those latents over many
   scenes, with cells that touch the object weighted up (they are ~15% of all cells, and the
   questions are about them).

:func:`code_purity` says how well the codes separate the object's colour from the background.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .data import COLOURS, PATCH_SIZE, ToyScene
from .train import VisionProbe


def latents(vq: Any, pixels: Float[Tensor, "n 3 h w"]) -> Float[Tensor, "n cells embed"]:
    """The quantiser's input (``quant_conv(encoder(x))``), one row per grid cell, row-major."""
    z = vq.quant_conv(vq.encoder(pixels))  # [n, embed, rows, cols]
    return z.flatten(2).transpose(1, 2)


def patch_pixels(pixels: Float[Tensor, "n 3 h w"], patch: int = PATCH_SIZE) -> Float[Tensor, "n cells 3*patch*patch"]:
    n, c, h, w = pixels.shape
    x = pixels.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // patch) * (w // patch), c * patch * patch)


def train_encoder(vq: Any, make_batch: Callable[[], tuple[Tensor, list[ToyScene]]], steps: int, lr: float,
                  probe_weight: float = 0.0, progress: Callable[[range], Any] = iter) -> list[float]:
    """Train encoder + quant_conv as a patch autoencoder (per-cell linear decoder, MSE), plus
    ``probe_weight`` x the toy LLaVA's vision probe loss (per-cell colour, pooled object shape) on the
    latents, so that codes can also say which shape a cell belongs to. -> reconstruction losses."""
    embed_dim = vq.quant_conv.out_channels
    decoder = torch.nn.Linear(embed_dim, 3 * PATCH_SIZE * PATCH_SIZE)
    probe = VisionProbe(embed_dim)
    params = list(vq.encoder.parameters()) + list(vq.quant_conv.parameters()) + list(decoder.parameters())
    optim = torch.optim.Adam(params + (list(probe.parameters()) if probe_weight else []), lr=lr)
    vq.train()
    losses = []
    for _ in progress(range(steps)):
        x, scenes = make_batch()
        z = latents(vq, x)
        loss = ((decoder(z) - patch_pixels(x)) ** 2).mean()
        losses.append(loss.item())
        if probe_weight:
            loss = loss + probe_weight * probe(z, scenes)[0]
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    vq.eval()
    return losses


def kmeans(x: Float[Tensor, "n d"], k: int, weights: Float[Tensor, " n"], iters: int = 25, seed: int = 0) -> Float[Tensor, "k d"]:
    """Weighted k-means (Lloyd); centroids start at k distinct weighted draws, empty ones are re-drawn."""
    g = torch.Generator().manual_seed(seed)
    centroids = x[torch.multinomial(weights, k, replacement=False, generator=g)].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(1)
        total = torch.zeros_like(centroids).index_add_(0, assign, x * weights[:, None])
        mass = torch.zeros(k).index_add_(0, assign, weights)
        redraw = x[torch.multinomial(weights, k, replacement=True, generator=g)]
        centroids = torch.where((mass > 0)[:, None], total / mass.clamp_min(1e-9)[:, None], redraw)
    return centroids


def object_cells(scenes: list[ToyScene]) -> Float[np.ndarray, "n cells"]:
    """Fraction of each grid cell covered by the scene's object, [scene, cell] row-major."""
    return np.stack([s.objects[0].patch_coverage().reshape(-1) for s in scenes])


@torch.no_grad()
def fit_codebook(vq: Any, scenes: list[ToyScene], pixels: Float[Tensor, "n 3 h w"], object_weight: float,
                 seed: int = 0, batch: int = 500) -> None:
    """Set ``vq.quantize.embedding`` to weighted k-means centroids of the latents of ``scenes``."""
    z = torch.cat([latents(vq, pixels[i: i + batch]) for i in range(0, len(pixels), batch)])  # [n, cells, embed]
    w = torch.from_numpy(np.where(object_cells(scenes) > 0, object_weight, 1.0)).float().reshape(-1)
    centroids = kmeans(z.reshape(-1, z.shape[-1]), vq.quantize.num_embeddings, w, seed=seed)
    vq.quantize.embedding.weight.copy_(centroids)


@torch.no_grad()
def encode(vq: Any, pixels: Float[Tensor, "n 3 h w"], batch: int = 500) -> Int[Tensor, "n cells"]:
    """VQ codes (codebook indices, not LM token ids) of every cell, row-major."""
    out = [vq.encode(pixels[i: i + batch], return_dict=True).image_tokens.reshape(len(pixels[i: i + batch]), -1)
           for i in range(0, len(pixels), batch)]
    return torch.cat(out)


def code_purity(codes: Int[Tensor, "n cells"], scenes: list[ToyScene]) -> dict[str, float]:
    """How well codes separate object colour from background, on cells labelled by coverage:
    'background' (not touched), the object's colour (covered > 50%), 'edge' (touched, <= 50%).

    purity: share of cells whose code's majority label is their own label (all cells);
    colour_purity: the same among the > 50%-covered cells, over colour labels only;
    object_codes: distinct codes on > 50%-covered cells; shared_with_background: how many of those
    codes also occur on untouched cells; codes_used: distinct codes overall.
    """
    cover = object_cells(scenes)
    colour = np.array([list(COLOURS).index(s.objects[0].colour) for s in scenes])[:, None]
    labels = np.where(cover > 0.5, colour + 2, np.where(cover > 0, 1, 0)).reshape(-1)  # 0 bg, 1 edge, 2+ colour
    c = codes.reshape(-1).numpy()

    def majority_share(cc: np.ndarray, ll: np.ndarray) -> float:
        return float(sum(np.bincount(ll[cc == k]).max() for k in np.unique(cc)) / max(len(cc), 1))

    inside = labels >= 2
    obj = set(c[inside].tolist())
    return dict(purity=100 * majority_share(c, labels), colour_purity=100 * majority_share(c[inside], labels[inside]),
                object_codes=len(obj), shared_with_background=len(obj & set(c[labels == 0].tolist())),
                codes_used=len(np.unique(c)))
