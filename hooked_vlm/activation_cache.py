"""TransformerLens's ActivationCache, told which entries have a batch axis and where their positions are.

A TL cache assumes every entry is ``[batch, pos, ...]``. A VLM cache also holds entries indexed by image
(``vision.*``, ``projector.*``: ``[image, patch, ...]``) or by image token (``hook_image_embeds``,
``blocks.{l}.hook_deepstack``: ``[n_image_tokens, d_model]``). TL's rules (the batch size is the most common
leading dim; ``pos_slice`` slices dim -2, or -3 for names ending in q/k/v/z/result) then slice the wrong axis
without a word: ``pos_slice=-1`` kept the LAST IMAGE TOKEN of ``hook_image_embeds`` and one HEAD of
``hook_rot_q``; ``apply_slice_to_batch_dim`` sliced vision entries whenever the image count happened to equal the
batch size. Here:

* LM entries (``[batch, pos, ...]``; ``[batch, head, q_pos, k_pos]`` for scores, pattern and mask) are sliced on
  their batch / position axis, whatever their name (a linear-attention state, ``[batch, head, d_k, d_v]``, has no
  position axis: batch-sliced only);
* per-image entries are never sliced by position (their positions are the tower's, not the sequence's); a batch
  slice keeps the images of the chosen items when the entry's leading dim is the batch's image count (or image
  token count), and keeps the entry whole otherwise (e.g. packed Qwen patches): ``cache.spans.layouts`` says which
  images belong to which item;
* the cache knows its batch size and its spans, and slicing the batch slices the spans too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
from transformer_lens.utilities.slice import Slice

#: entries indexed by image (these name prefixes) or by image token (these hook points, at any depth of a name)
PER_IMAGE_PREFIXES = ("vision.", "projector.")
PER_IMAGE_TOKEN_POINTS = ("hook_image_embeds", "hook_deepstack")
#: LM entries laid out [batch, head, q_pos, k_pos]: positions on axis 2; every other LM entry has them on axis 1
QK_SUFFIXES = ("hook_attn_scores", "hook_pattern", "hook_mask")
#: LM entries without a sequence-position axis: a linear-attention layer's state after the last position
#: [batch, head, d_k, d_v]; a cross-attention layer's keys / values (and their norms) over the IMAGE key axis
#: [batch, key, kv_head, d_head]; the tanh gates of cross-attention blocks (scalars)
NO_POS_SUFFIXES = ("linear_attn.hook_state", "cross_attn.hook_k", "cross_attn.hook_v", "cross_attn.k_norm.hook_normalized",
                   "cross_attn.k_norm.hook_scale", "hook_attn_gate", "hook_mlp_gate")
#: entries without a batch axis: functions of parameters alone (a cross-attention block's tanh gates, [1]); batch
#: slicing and remove_batch_dim keep them whole
UNBATCHED_SUFFIXES = ("hook_attn_gate", "hook_mlp_gate")


def is_unbatched(name: str) -> bool:
    base = name[: -len("_grad")] if name.endswith("_grad") else name
    return base.endswith(UNBATCHED_SUFFIXES)


def is_per_image(name: str) -> bool:
    """True for entries indexed by image or image token (vision tower, projector, image embeddings, DeepStack)."""
    return name.startswith(PER_IMAGE_PREFIXES) or is_per_image_token(name)


def is_per_image_token(name: str) -> bool:
    """True for ``hook_image_embeds`` / ``blocks.{l}.hook_deepstack`` and what hangs below them (e.g. an SAE's
    ``hook_image_embeds.hook_sae_acts_post``), backward entries (``..._grad``) included."""
    base = name[: -len("_grad")] if name.endswith("_grad") else name
    return any(part in PER_IMAGE_TOKEN_POINTS for part in base.split("."))


def lm_pos_axis(name: str) -> int | None:
    """Axis of the sequence position in an LM entry (batched layout); None for per-image entries and LM entries
    without positions (recurrent states)."""
    base = name[: -len("_grad")] if name.endswith("_grad") else name
    if is_per_image(name) or base.endswith(NO_POS_SUFFIXES):
        return None
    return 2 if base.endswith(QK_SUFFIXES) else 1


def slice_positions(tensor: torch.Tensor, name: str, pos_slice: Slice, has_batch_dim: bool = True) -> torch.Tensor:
    """``tensor`` with ``pos_slice`` applied to its sequence-position axis (per-image entries unchanged)."""
    axis = lm_pos_axis(name)
    if axis is None:
        return tensor
    return pos_slice.apply(tensor, dim=axis if has_batch_dim else axis - 1)


def pos_sliced_hooks(fwd: list, bwd: list, pos_slice: Any, remove_batch_dim: bool = False) -> tuple[list, list]:
    """TL's caching hooks (name, save) made to store only ``pos_slice`` of the LM entries' positions (and, with
    ``remove_batch_dim``, to drop a leading dim of 1 as TL 4 does; the caller checks that the batch is one item)."""
    if pos_slice is None and not remove_batch_dim:
        return fwd, bwd
    pos = Slice.unwrap(pos_slice) if pos_slice is not None else None

    def sliced(save: Callable) -> Callable:
        def save_sliced(tensor: torch.Tensor, hook: Any) -> None:
            kept = slice_positions(tensor, hook.name, pos) if pos is not None else tensor
            drop = remove_batch_dim and kept.ndim > 0 and kept.shape[0] == 1 and not is_unbatched(hook.name)
            save(kept[0] if drop else kept, hook=hook)

        return save_sliced

    return [(n, sliced(f)) for n, f in fwd], [(n, sliced(f)) for n, f in bwd]


def check_one_item(args: tuple, kwargs: dict) -> None:
    """Raise unless the model inputs (positional or ``input_ids=``, or a dict of them) hold one batch item."""
    first = args[0] if args else kwargs.get("input_ids")
    tokens = first.get("input_ids") if isinstance(first, Mapping) else first
    if isinstance(tokens, torch.Tensor) and tokens.ndim == 2 and tokens.shape[0] != 1:
        raise ValueError(f"remove_batch_dim=True needs a batch of one item; these inputs hold {tokens.shape[0]} "
                         "(run each item alone, or keep the batch dim and use cache.apply_slice_to_batch_dim(i))")


class VLMBatchMixin:
    """Batch size, spans, batch and position slicing of a VLM cache (module docstring). A mixin, placed before
    TransformerLens's ActivationCache in the bases: ``hooked_vlm.tl_cache.VLMActivationCache``, the cache
    ``run_with_cache`` returns."""

    def __init__(self, cache_dict: dict[str, torch.Tensor], model: Any, has_batch_dim: bool = True,
                 spans: Any = None, batch_size: int | None = None, kv_spans: Any = None):
        super().__init__(cache_dict, model, has_batch_dim=has_batch_dim)  # type: ignore[call-arg]
        self.spans = spans
        self.kv_spans = kv_spans  # cross-attention models: the key axis (hooked_vlm.key_spans.KeySpans)
        self.batch_size = batch_size if batch_size is not None else (spans.batch if spans is not None else None)

    def _batch_size(self) -> int:  # TL guesses it from the most common leading dim; we know it
        return self.batch_size if self.batch_size is not None else super()._batch_size()  # type: ignore[misc]

    def remove_batch_dim(self, batch_size: int | None = None) -> Any:
        """Drop the batch axis of a one-item cache (entries whose leading dim is 1 lose it, as in TL)."""
        if not self.has_batch_dim:
            return super().remove_batch_dim()  # type: ignore[misc]  # TL warns that it was already removed
        n = batch_size if batch_size is not None else self._batch_size()
        if n != 1:
            raise ValueError(f"cannot remove the batch dimension of a cache of {n} items; select one first "
                             "(cache.apply_slice_to_batch_dim(i)) or run the model on one item")
        for key, value in self.cache_dict.items():
            if value.ndim > 0 and value.shape[0] == 1 and not is_unbatched(key):
                self.cache_dict[key] = value[0]
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice: Any) -> Any:
        """A cache of the chosen batch items: LM entries sliced on the batch axis, per-image entries on their images,
        spans and key spans (cross-attention models) sliced alike. An int slice drops the LM entries' batch axis (as in TL)."""
        batch_slice = batch_slice if isinstance(batch_slice, Slice) else Slice(batch_slice)
        if not self.has_batch_dim:
            if batch_slice.mode in ("identity", "empty"):
                return self
            raise ValueError("cannot index into a cache without a batch dim")
        n = self._batch_size()
        index = torch.as_tensor(batch_slice.slice) if batch_slice.mode == "array" else batch_slice.slice
        items = [int(i) for i in torch.arange(n)[index].reshape(-1)]
        images, image_tokens = self._image_rows(items)
        out = {}
        for name, value in self.cache_dict.items():
            if is_unbatched(name):
                out[name] = value
            elif not is_per_image(name):
                if value.ndim == 0 or value.shape[0] != n:
                    raise ValueError(f"cache entry {name!r} has shape {tuple(value.shape)}; expected a batch axis of {n}")
                out[name] = batch_slice.apply(value, dim=0)
            else:
                per_token = is_per_image_token(name)
                rows = image_tokens if per_token else images
                whole = rows is None or value.ndim == 0 or value.shape[0] != self._n_rows(per_token)
                out[name] = value if whole else value[rows.to(value.device)]
        spans = self._slice_spans(items)
        kv_spans = self.kv_spans.select(items) if self.kv_spans is not None else None
        return type(self)(out, self.model, has_batch_dim=batch_slice.mode != "int", spans=spans,
                          batch_size=None if batch_slice.mode == "int" else len(items), kv_spans=kv_spans)

    # ---------------------------------------------------------------- helpers
    def _n_rows(self, per_token: bool) -> int:
        """Total images (or image tokens) of the batch, from the spans' layouts; -1 when unknown."""
        layouts = getattr(self.spans, "layouts", None)
        if not layouts:
            return -1
        return sum(lay.n_tokens if per_token else 1 for item in layouts for lay in item)

    def _image_rows(self, items: list[int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Rows of per-image and per-image-token entries that belong to ``items`` (None without layouts)."""
        layouts = getattr(self.spans, "layouts", None)
        if not layouts:
            return None, None
        img_start, tok_start, starts = 0, 0, []
        for item in layouts:
            starts.append((img_start, tok_start, len(item), sum(lay.n_tokens for lay in item)))
            img_start, tok_start = img_start + len(item), tok_start + starts[-1][3]
        imgs = [i for b in items for i in range(starts[b][0], starts[b][0] + starts[b][2])]
        toks = [t for b in items for t in range(starts[b][1], starts[b][1] + starts[b][3])]
        return torch.tensor(imgs, dtype=torch.long), torch.tensor(toks, dtype=torch.long)

    def _slice_spans(self, items: list[int]) -> Any:
        if self.spans is None:
            return None
        from .spans import TokenSpans

        idx = torch.tensor(items, dtype=torch.long, device=self.spans.grid.device)
        masks = {name: m[idx] for name, m in self.spans.masks.items()}
        layouts = [self.spans.layouts[b] for b in items] if self.spans.layouts else []
        return TokenSpans(masks, self.spans.grid[idx], layouts)

