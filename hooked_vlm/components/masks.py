"""Which keys each query may attend to, without materialising [q, k] unless needed."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


@dataclass
class AttentionMask:
    """Causal / padding structure of one forward.

    ``key_padding`` [batch, k_len] is True at real tokens (None = no padding);
    ``query_positions`` [q_len] are the absolute positions of the queries (keys are 0..k_len-1).
    """

    causal: bool
    key_padding: torch.Tensor | None
    query_positions: torch.Tensor
    k_len: int
    sliding_window: int | None = None
    segment_ids: torch.Tensor | None = None  # [batch, k_len]: attend only within a segment (packed images, windows)
    # [batch, k_len]: positions with the same id >= 0 also attend to each other bidirectionally (OR-ed onto the
    # causal mask BEFORE the sliding window is applied, as HF's Gemma 3 mask does); -1 = no block
    block_ids: torch.Tensor | None = None
    # True: the blocks are OR-ed on AFTER the sliding window (HF's block_sequence_ids overlay, PaliGemma's prefix)
    block_after_window: bool = False
    # [batch, k_len] True at padding (non-causal towers): a query and a key that are BOTH padding are masked, every
    # other pair may attend (HF Mllama's aspect-ratio mask over padding patches and padding tiles)
    pad_pairs: torch.Tensor | None = None
    # dense() of this forward, kept for the next layers when memo=True (and what the fast path derives from it); a new
    # mask (dataclasses.replace, .to) starts empty. Never handed to hooks: they get a fresh tensor to edit.
    _memo: dict = field(default_factory=dict, init=False, compare=False, repr=False)
    # chunked local attention (Llama 4): a query sees only keys in its own chunk of this many positions, chunks counted
    # from each row's first real token (HF create_chunked_causal_mask's left-padding offset); None = no chunks
    chunk_size: int | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "AttentionMask":
        """This mask with its tensors on ``device`` (itself when they are there): accelerate's device hooks call it
        when a block on another device receives the mask (``hooked_vlm.devices``)."""
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        if all(t is getattr(self, name) for name, t in moved.items()):
            return self
        return replace(self, **moved)

    @property
    def q_len(self) -> int:
        return int(self.query_positions.shape[0])

    @property
    def is_plain_causal(self) -> bool:
        """True when SDPA's ``is_causal`` (or no mask at all) gives exactly this mask."""
        if self.sliding_window is not None and self.k_len > self.sliding_window:
            return False
        if self.segment_ids is not None or self.block_ids is not None or self.pad_pairs is not None:
            return False
        if self.chunk_size is not None and self.k_len > self.chunk_size:
            return False
        return self.key_padding is None and (self.q_len == self.k_len or self.q_len == 1 or not self.causal)

    def sdpa_is_causal(self) -> bool:
        return self.causal and self.q_len == self.k_len and self.q_len > 1

    def dense(self, batch: int, memo: bool = False) -> torch.Tensor:
        """Bool [batch, 1, q_pos, k_pos]; True = the query may attend to the key. ``memo``: built once per mask and
        batch and shared by the layers that ask (do not edit it in place)."""
        if memo:
            if self._memo.get("batch") != batch:
                self._memo.clear()
                self._memo.update(batch=batch, dense=self.dense(batch))
            return self._memo["dense"]
        device = self.query_positions.device
        keys = torch.arange(self.k_len, device=device)
        if self.causal:
            allowed = keys[None, :] <= self.query_positions[:, None]
        else:
            allowed = torch.ones(self.q_len, self.k_len, dtype=torch.bool, device=device)
        window = None if self.sliding_window is None else self.query_positions[:, None] - keys[None, :] < self.sliding_window
        if window is not None and self.block_after_window:
            allowed = allowed & window
        if self.block_ids is not None:
            blk = self.block_ids.to(device)
            q_blk = blk[:, self.query_positions, None]  # [batch, q, 1]
            allowed = allowed[None] | ((q_blk == blk[:, None, :]) & (q_blk >= 0))  # [batch, q, k]
        if window is not None and not self.block_after_window:
            allowed = allowed & window
        allowed = allowed[:, None] if allowed.ndim == 3 else allowed[None, None]
        allowed = allowed.expand(batch, 1, self.q_len, self.k_len)
        if self.key_padding is not None:
            allowed = allowed & self.key_padding[:, None, None, :].to(device)
        if self.chunk_size is not None:
            if self.key_padding is not None:  # leading padding of each row: its chunks start at its first real token
                left = (self.key_padding.to(device).long().cumsum(-1) == 0).sum(-1)  # [batch]
            else:
                left = torch.zeros(batch, dtype=torch.long, device=device)
            q_chunk = (self.query_positions[None, :] - left[:, None]).div(self.chunk_size, rounding_mode="floor")
            k_chunk = (keys[None, :] - left[:, None]).div(self.chunk_size, rounding_mode="floor")
            allowed = allowed & (q_chunk[:, None, :, None] == k_chunk[:, None, None, :])
        if self.segment_ids is not None:
            seg = self.segment_ids.to(device)
            allowed = allowed & (seg[:, None, self.query_positions, None] == seg[:, None, None, :])
        if self.pad_pairs is not None:
            pad = self.pad_pairs.to(device)
            allowed = allowed & ~(pad[:, None, self.query_positions, None] & pad[:, None, None, :])
        return allowed
