"""TokenSpans: the role of every position of a forward (image, per image, markers, text, last).

Built from the token ids (before image embeddings are spliced in), the attention mask, the
family's :class:`~hooked_vlm.config.TokenRoles` and the patch-grid shape of every image, so it is
the same code for every family. The cache and every hook point carry it (``hook.spans``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .config import TokenRoles

#: grid columns of :attr:`TokenSpans.grid`
GRID_FIELDS = ("image", "tile", "row", "col")


@dataclass
class ImageLayout:
    """Where the content tokens of one image come from: ``tiles`` grids of ``rows`` x ``cols`` patches.

    ``tile_shapes`` overrides the shape per tile when tiles differ (e.g. base image + unpadded tiles).
    ``newline_offsets`` lists offsets (within this image's placeholder tokens) that hold a row-break
    embedding (LLaVA-NeXT / OneVision ``image_newline``): they get role ``row_break``, no grid cell.
    ``latents`` > 0: every tile is that many perceiver-resampler latents (Idefics2), not patches: a latent has no
    (row, col) on the image (grid row = col = -1, span ``latent``) and ``rows`` / ``cols`` are 0.
    ``crop_of`` / ``crop_index``: this image is crop ``crop_index`` (0, 1, ...) of image ``crop_of`` of the same batch
    item (Gemma 3 pan-and-scan); its tokens get span ``crop`` (the original image's do not).
    """

    rows: int
    cols: int
    tiles: int = 1
    tile_shapes: list[tuple[int, int]] | None = None
    n_prefix: int = 0  # content tokens before the grid (e.g. a kept class token); no grid cell
    n_suffix: int = 0  # content tokens after the grid (HunYuanVL's learned image_end embedding); no grid cell
    newline_offsets: list[int] | None = None  # placeholder offsets holding a row-break embedding
    thumbnail: bool = False  # the last tile is a downscaled view of the whole image (InternVL): span ``thumbnail``
    thumbnail_first: bool = False  # with ``thumbnail``: the FIRST tile is the thumbnail (Ovis 2), the crops follow
    # (rows, cols) of the crop grid the tiles come from (Ovis 2): crop k (counted after a thumbnail) sits at
    # (k // cols, k % cols) of the image; None when the family does not say
    tile_grid: tuple[int, int] | None = None
    low_res: bool = False  # the FIRST tile is a low-resolution view of the whole image (Molmo 2): span ``low_res``
    latents: int = 0  # tokens per tile when they are resampler latents (no grid); 0 = patches on a rows x cols grid
    crop_of: int | None = None  # index of the image this one was cropped from (pan-and-scan), None = not a crop
    crop_index: int | None = None  # which crop of crop_of it is (0-based, the processor's order)

    def __post_init__(self) -> None:
        if self.latents < 0 or (self.latents and (self.rows or self.cols or self.tile_shapes)):
            raise ValueError(f"ImageLayout(latents={self.latents}): latent tokens have no patch grid; give rows=0, "
                             f"cols=0 and no tile_shapes (got rows={self.rows}, cols={self.cols})")
        if (self.crop_of is None) != (self.crop_index is None):
            raise ValueError(f"ImageLayout: crop_of={self.crop_of} and crop_index={self.crop_index} go together")

    def shapes(self) -> list[tuple[int, int]]:
        if self.latents:
            return []
        return self.tile_shapes if self.tile_shapes is not None else [(self.rows, self.cols)] * self.tiles

    @property
    def n_tokens(self) -> int:
        grid = self.tiles * self.latents if self.latents else sum(r * c for r, c in self.shapes())
        return self.n_prefix + grid + self.n_suffix + len(self.newline_offsets or ())


class NamedMasks:
    """Accessors shared by :class:`TokenSpans` (the positions of a forward) and :class:`~hooked_vlm.key_spans.KeySpans`
    (the cross-attention key axis): named bool masks ``masks[name]`` [batch, n] beside a ``grid`` [batch, n, ...]."""

    masks: dict[str, Tensor]
    grid: Tensor
    _kind = "span"  # the word error messages use

    @property
    def batch(self) -> int:
        return int(self.grid.shape[0])

    @property
    def names(self) -> list[str]:
        return list(self.masks)

    def __contains__(self, name: str) -> bool:
        return name in self.masks

    def mask(self, name: str) -> Bool[Tensor, "batch pos"]:
        if name not in self.masks:
            raise KeyError(f"no {self._kind} named {name!r}; {self._kind}s of this input: {', '.join(self.names)}")
        return self.masks[name]

    def positions(self, name: str, batch: int = 0) -> Int[Tensor, " n"]:
        """Positions (indices on the masks' second axis) of span ``name`` in batch item ``batch``."""
        if not -self.batch <= batch < self.batch:
            raise IndexError(f"batch item {batch} is out of range: the batch has {self.batch} item(s) "
                             f"(valid: 0..{self.batch - 1})")
        return self.mask(name)[batch].nonzero().flatten()


@dataclass
class TokenSpans(NamedMasks):
    """Roles of positions in a batch.

    ``masks[name]`` is Bool [batch, pos]; ``grid`` is Int [batch, pos, 4] holding
    (image index within the batch item, tile, row, col) of each image token and -1 elsewhere.
    """

    masks: dict[str, Tensor]
    grid: Tensor
    layouts: list[list[ImageLayout]] = field(default_factory=list)  # per batch item, per image

    def __repr__(self) -> str:
        counts = ", ".join(f"{name} ({int(m.sum())})" for name, m in self.masks.items())
        images = [len(items) for items in self.layouts]
        return (f"TokenSpans(batch={self.batch}, seq_len={self.seq_len}, images per item {images}; "
                f"spans (positions over the batch): {counts})")

    @property
    def seq_len(self) -> int:
        return int(self.grid.shape[1])

    def __getitem__(self, name: str) -> Tensor | list[Tensor]:
        """Positions of ``name``: a tensor when the batch has one item, else a list per item."""
        per_item = [self.positions(name, b) for b in range(self.batch)]
        return per_item[0] if self.batch == 1 else per_item

    def n_images(self, batch: int = 0) -> int:
        return len(self.layouts[batch]) if self.layouts else 0

    def extend(self, n_new: int) -> "TokenSpans":
        """Spans after ``n_new`` generated tokens are appended: they are ``text`` and ``generated``."""
        pad = lambda m, v: torch.cat([m, torch.full((m.shape[0], n_new), v, dtype=m.dtype, device=m.device)], 1)
        masks = {name: pad(m, False) for name, m in self.masks.items()}
        masks.setdefault("generated", torch.zeros_like(next(iter(masks.values()))))
        masks["generated"][:, -n_new:] = True
        masks["text"][:, -n_new:] = True
        if "suffix" in masks:  # prefix-LM: generated tokens are suffix (causal)
            masks["suffix"][:, -n_new:] = True
        masks["last"] = torch.zeros_like(masks["last"])
        masks["last"][:, -1] = True
        grid = torch.cat([self.grid, torch.full((self.batch, n_new, 4), -1, dtype=self.grid.dtype, device=self.grid.device)], 1)
        return TokenSpans(masks, grid, self.layouts)

    def with_prefix_suffix(self, token_type_ids: Tensor) -> "TokenSpans":
        """Add ``prefix`` (token type 0: image + prefix text, bidirectional under a prefix-LM mask) and ``suffix``
        (type 1, causal) over the real tokens, from the processor's ``token_type_ids`` (PaliGemma)."""
        marks = torch.as_tensor(token_type_ids).to(self.grid.device)
        if marks.ndim != 2 or tuple(marks.shape) != (self.batch, self.seq_len):
            raise ValueError(f"token_type_ids has shape {tuple(marks.shape)}; expected [batch, pos] like input_ids "
                             f"({self.batch}, {self.seq_len})")
        real = ~self.masks["pad"]
        masks = dict(self.masks, prefix=real & (marks == 0), suffix=real & (marks == 1))
        return TokenSpans(masks, self.grid, self.layouts)

    def to_grid(self, values: Tensor, image: int = 0, batch: int = 0, tile: int = 0) -> Tensor:
        """Put per-position ``values`` ([pos] or [pos, ...]) of one image back on its patch grid.

        Returns [rows, cols, ...]; cells without a token are NaN.
        """
        if values.shape[0] != self.seq_len:
            raise ValueError(f"values has {values.shape[0]} positions; the sequence has {self.seq_len}")
        g = self.grid[batch]
        sel = (g[:, 0] == image) & (g[:, 1] == tile)
        if not sel.any():
            raise ValueError(f"batch item {batch} has no image {image} (tile {tile})")
        if self.layouts and image < len(self.layouts[batch]) and self.layouts[batch][image].latents:
            raise ValueError(
                f"image {image} of batch item {batch} is {self.layouts[batch][image].latents} perceiver-resampler "
                "latents per tile, not patches: a latent mixes the whole image and has no (row, col) to draw it at. "
                f"Read its values by position instead: spans.positions('image.{image}', {batch}) (span 'latent')")
        rows, cols = int(g[sel, 2].max()) + 1, int(g[sel, 3].max()) + 1
        out = torch.full((rows, cols, *values.shape[1:]), float("nan"), dtype=torch.float32)
        out[g[sel, 2].cpu(), g[sel, 3].cpu()] = values[sel.to(values.device)].float().cpu()
        return out


def build_spans(
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None,
    roles: TokenRoles,
    layouts: list[ImageLayout],
) -> TokenSpans:
    """Assign roles; ``layouts`` lists every image of the batch in order (batch item by batch item)."""
    ids = input_ids
    real = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    masks: dict[str, Tensor] = {}
    image = (ids == roles.image_token_id) & real
    masks["image"] = image
    structural = image.clone()
    for name, token_ids in _marker_roles(roles).items():
        m = torch.isin(ids, torch.tensor(token_ids, device=ids.device)) & real
        masks[name] = m
        structural |= m
    masks["text"] = real & ~structural
    masks["pad"] = ~real
    last = torch.zeros_like(real)
    idx = torch.arange(ids.shape[1], device=ids.device).expand_as(ids).masked_fill(~real, -1).max(1).values
    last[torch.arange(ids.shape[0]), idx.clamp(min=0)] = True
    masks["last"] = last & real

    grid = torch.full((*ids.shape, 4), -1, dtype=torch.long, device=ids.device)
    per_item: list[list[ImageLayout]] = []
    queue = list(layouts)
    for b in range(ids.shape[0]):
        pos = image[b].nonzero().flatten()
        items: list[ImageLayout] = []
        start = 0
        while start < len(pos):
            if not queue:
                raise ValueError(
                    f"batch item {b} has {len(pos)} image tokens but the images given only cover {start}; "
                    "each image placeholder needs one image"
                )
            layout = queue.pop(0)
            n = layout.n_tokens
            if start + n > len(pos):
                raise ValueError(
                    f"batch item {b}: image {len(items)} needs {n} image tokens but only {len(pos) - start} remain; "
                    "the prompt's image placeholders do not match the images"
                )
            img_pos = pos[start : start + n]
            i = len(items)
            if layout.newline_offsets:  # placeholders holding a row-break embedding: row_break, not image
                is_nl = torch.zeros(n, dtype=torch.bool, device=ids.device)
                is_nl[torch.tensor(layout.newline_offsets, device=ids.device)] = True
                masks.setdefault("row_break", torch.zeros_like(real))[b, img_pos[is_nl]] = True
                masks["image"][b, img_pos[is_nl]] = False
                img_pos = img_pos[~is_nl]
            masks.setdefault(f"image.{i}", torch.zeros_like(real))[b, img_pos] = True
            if layout.crop_of is not None:
                masks.setdefault("crop", torch.zeros_like(real))[b, img_pos] = True
            grid[b, img_pos[: layout.n_prefix], 0] = i
            grid[b, img_pos[len(img_pos) - layout.n_suffix:], 0] = i
            offset = layout.n_prefix
            for t in range(layout.tiles if layout.latents else 0):  # latents: image and tile, no (row, col)
                tile_pos = img_pos[offset : offset + layout.latents]
                grid[b, tile_pos, 0], grid[b, tile_pos, 1] = i, t
                masks.setdefault("latent", torch.zeros_like(real))[b, tile_pos] = True
                offset += layout.latents
            for t, (r, c) in enumerate(layout.shapes()):
                cell = torch.arange(r * c, device=ids.device)
                tile_pos = img_pos[offset : offset + r * c]
                grid[b, tile_pos] = torch.stack([torch.full_like(cell, i), torch.full_like(cell, t), cell // c, cell % c], -1)
                offset += r * c
            if layout.low_res:
                r, c = layout.shapes()[0]
                masks.setdefault("low_res", torch.zeros_like(real))[b, img_pos[layout.n_prefix: layout.n_prefix + r * c]] = True
            if layout.thumbnail:
                shapes = layout.shapes()
                r, c = shapes[0] if layout.thumbnail_first else shapes[-1]
                first = layout.n_prefix if layout.thumbnail_first else offset - r * c
                masks.setdefault("thumbnail", torch.zeros_like(real))[b, img_pos[first: first + r * c]] = True
            items.append(layout)
            start += n
        per_item.append(items)
    if queue:
        raise ValueError(f"{len(layouts)} images were given but the prompts hold placeholders for only {len(layouts) - len(queue)}")
    return TokenSpans(masks, grid, per_item)


def _marker_roles(roles: TokenRoles) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    if roles.boi_token_id is not None:
        out["boi"] = (roles.boi_token_id,)
    if roles.eoi_token_id is not None:
        out["eoi"] = (roles.eoi_token_id,)
    if roles.row_break_token_ids:
        out["row_break"] = tuple(roles.row_break_token_ids)
    out.update({k: tuple(v) for k, v in roles.extra.items()})
    return out
