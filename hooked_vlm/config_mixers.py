"""Configuration of the token mixers other than self-attention (the ``layer_types`` kinds of
:data:`hooked_vlm.config.LAYER_TYPES` that need their own fields): a :class:`~hooked_vlm.config.TowerConfig` holds one
of each kind its layers use. Re-exported by :mod:`hooked_vlm.config`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LinearAttentionConfig:
    """Gated DeltaNet token mixer (``linear_attention`` layers; Qwen3.5, Qwen3-Next): components/gated_deltanet.py."""

    n_key_heads: int  # q / k heads; each serves n_value_heads // n_key_heads consecutive value heads
    n_value_heads: int
    d_key: int  # per-head q / k size
    d_value: int  # per-head v size (and the recurrent state's second axis)
    conv_kernel: int = 4  # the causal depthwise conv over q | k | v (it sees conv_kernel - 1 earlier positions)
    act_fn: str = "silu"  # after the conv
    norm_eps: float = 1e-6  # the gated RMSNorm over d_value
    chunk_size: int = 64  # the chunked algorithm's block length (numbers agree with the recurrent one)

    def __post_init__(self) -> None:
        for name in ("n_key_heads", "n_value_heads", "d_key", "d_value", "conv_kernel", "chunk_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"LinearAttentionConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.n_value_heads % self.n_key_heads:
            raise ValueError(f"n_value_heads={self.n_value_heads} is not a multiple of n_key_heads={self.n_key_heads}")

    @property
    def conv_dim(self) -> int:  # channels of the causal conv: q | k | v
        return 2 * self.n_key_heads * self.d_key + self.n_value_heads * self.d_value


@dataclass
class ShortConvConfig:
    """Short causal convolution token mixer (``conv`` layers; LFM2): a gated depthwise conv of ``kernel`` taps."""

    kernel: int
    bias: bool = False  # on the in-projection, the conv and the out-projection

    def __post_init__(self) -> None:
        if not isinstance(self.kernel, int) or self.kernel < 1:
            raise ValueError(f"ShortConvConfig.kernel must be a positive int, got {self.kernel!r}")


@dataclass
class CrossAttentionConfig:
    """Cross-attention token mixer (``cross_attention`` layers; Mllama): queries from the text stream, keys / values
    from the projected image features (components/cross_attention.py)."""

    n_heads: int
    n_key_value_heads: int
    d_head: int
    qk_norm: str | None = None  # "RMS" | "LN": each head's q (over text) and k (over image keys) normed over d_head
    qk_norm_eps: float = 1e-6
    attn_bias: bool = False  # bias on q, k, v (and o)
    # text rows whose cross-attention mask allows no image key (text before the first image): True = HF Mllama's
    # "full text row" rule: such a row attends to EVERY key (its mask row is all True) and the layer's MLP output is
    # zeroed at that row; False = such a row gets zeros from the attention and keeps its MLP output
    empty_rows_attend_all: bool = True

    def __post_init__(self) -> None:
        for name in ("n_heads", "n_key_value_heads", "d_head"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"CrossAttentionConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.n_heads % self.n_key_value_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_key_value_heads={self.n_key_value_heads}")
        if self.qk_norm not in (None, "RMS", "LN"):
            raise ValueError(f"CrossAttentionConfig.qk_norm must be None, 'RMS' or 'LN', got {self.qk_norm!r}")


@dataclass
class RelPosAttentionConfig:
    """Encoder attention over a square patch grid with decomposed relative positions (SAM's ViT; the layer kinds of
    ``REL_POS_LAYER_TYPES``): ``window_rel_pos_attention`` layers attend within non-overlapping ``window`` x ``window``
    windows (the grid zero-padded to a multiple of ``window`` after the layer's input norm), ``global_rel_pos_attention``
    layers over the whole ``grid`` x ``grid``. ``rel_pos``: each layer adds q . R_h[row_q - row_k] + q . R_w[col_q -
    col_k] to the scores (tables of 2 * size - 1 rows, size = window or grid)."""

    grid: int  # patches per side
    window: int  # window side of the windowed layers
    rel_pos: bool = True

    def __post_init__(self) -> None:
        for name in ("grid", "window"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"RelPosAttentionConfig.{name} must be a positive int, got {getattr(self, name)!r}")
