"""Plain-dataclass configuration of the uniform hooked architecture.

A converter turns an HF config into a :class:`HookedVLMConfig`; components read only these
fields, never the HF config or the family name. The language-model fields sit at the top
level under TransformerLens names (``n_layers``, ``d_model``, ``normalization_type`` ...), so
TL's :class:`~transformer_lens.ActivationCache` helpers work on our caches unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TowerConfig:
    """One stack of pre-norm transformer blocks (language model or vision tower)."""

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    d_head: int | None = None
    n_key_value_heads: int | None = None
    act_fn: str = "silu"
    gated_mlp: bool = True
    normalization_type: str = "RMS"  # "RMS" or "LN" (TransformerLens names)
    norm_eps: float = 1e-6
    attn_bias: bool = False  # bias on q, k, v
    attn_out_bias: bool = False  # bias on the output projection
    mlp_bias: bool = False
    causal: bool = True
    positional: str = "rope"  # "rope" | "learned" | "none"
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    max_position_embeddings: int = 4096
    attn_scale: float | None = None  # None = d_head ** -0.5
    sliding_window: int | None = None  # keys further back than this are masked (Mistral)
    qk_norm: str | None = None  # "LN" | "RMS": normalise each head's q and k over d_head, before rope
    qk_norm_per_head: bool = False  # q/k norm weights [head, d_head] (Chameleon) instead of shared [d_head]
    qk_norm_eps: float | None = None  # None = norm_eps
    norm_placement: str = "pre"  # "pre": x + f(ln(x)); "post_sublayer": x + ln(f(x)) (Swin-style; Chameleon swin_norm)

    def __post_init__(self) -> None:
        if self.d_head is None:
            self.d_head = self.d_model // self.n_heads
        if self.n_key_value_heads is None:
            self.n_key_value_heads = self.n_heads
        if self.n_heads % self.n_key_value_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_key_value_heads={self.n_key_value_heads}")
        if self.norm_placement not in ("pre", "post_sublayer"):
            raise ValueError(f"norm_placement must be 'pre' or 'post_sublayer', got {self.norm_placement!r}")
        if self.normalization_type not in ("RMS", "LN"):
            raise ValueError(f"normalization_type must be 'RMS' or 'LN', got {self.normalization_type!r}")


@dataclass
class VisionConfig:
    """A ViT image encoder: patch embedding, optional class token, positions, pre-norm blocks."""

    tower: TowerConfig
    image_size: int
    patch_size: int
    kind: str = "vit"  # which tower module builds it (hooked_vlm.components.VISION_KINDS)
    n_channels: int = 3
    class_token: bool = True
    patch_bias: bool = False
    ln_pre: bool = True  # CLIP's pre_layrnorm
    # Which hidden states feed the projector (HF indexing: 0 = embeddings, i = after block i-1).
    feature_layers: tuple[int, ...] = (-2,)
    feature_select: str = "default"  # "default" drops the class token, "full" keeps it
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific settings

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid_size**2


@dataclass
class VQConfig:
    """A VQ image tokenizer (Chameleon, Emu3): pixels -> discrete codes -> LM token ids, no projector.

    The conv net is the checkpoint family's own HF module (``hf_class``, built from ``hf_config``),
    wrapped by ``hooked_vlm.components.vq``; codes are mapped to LM token ids by ``code_to_token``.
    """

    hf_class: str  # "module:Class" of the HF VQ-VAE
    hf_config_class: str  # "module:Class" of its config
    hf_config: dict[str, Any]
    code_to_token: list[int]  # LM token id of VQ code i
    downsample: int  # pixels per code along each side
    encode: str = "indices"  # "indices": encode(px).image_tokens; "sized": encode(px, image_sizes).image_tokens
    row_break_token_id: int | None = None  # token appended after each row of codes (Emu3 end-of-line)
    kind: str = "vq"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProjectorConfig:
    """The MLP that maps vision features into the language model's residual stream."""

    d_in: int
    d_out: int
    act_fn: str = "gelu"
    bias: bool = True
    kind: str = "mlp"  # which projector module builds it (hooked_vlm.components.PROJECTOR_KINDS)
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific settings


@dataclass
class TokenRoles:
    """Token ids with a structural role; used to build :class:`~hooked_vlm.spans.TokenSpans`."""

    image_token_id: int
    boi_token_id: int | None = None
    eoi_token_id: int | None = None
    row_break_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    extra: dict[str, tuple[int, ...]] = field(default_factory=dict)  # more named roles, e.g. end_of_frame


@dataclass
class HookedVLMConfig:
    """Everything needed to build a :class:`~hooked_vlm.HookedVLM`.

    ``text`` is the language model; its fields are re-exported at the top level under
    TransformerLens names (``cfg.n_layers`` is the number of LM blocks).
    """

    architecture: str  # HF architectures[0], for reporting only: components never read it
    text: TowerConfig
    d_vocab: int
    vision: VisionConfig | VQConfig | None = None
    projector: ProjectorConfig | None = None
    roles: TokenRoles | None = None
    tie_word_embeddings: bool = False
    native_multimodal: bool = False  # trained from scratch on interleaved image-text data
    image_output: bool = False  # can generate images
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    # --- TransformerLens-compatible views of the language model ---
    @property
    def n_layers(self) -> int:
        return self.text.n_layers

    @property
    def d_model(self) -> int:
        return self.text.d_model

    @property
    def n_heads(self) -> int:
        return self.text.n_heads

    @property
    def n_key_value_heads(self) -> int:
        return self.text.n_key_value_heads  # type: ignore[return-value]

    @property
    def d_head(self) -> int:
        return self.text.d_head  # type: ignore[return-value]

    @property
    def d_mlp(self) -> int:
        return self.text.d_mlp

    @property
    def normalization_type(self) -> str:
        return self.text.normalization_type

    @property
    def act_fn(self) -> str:
        return self.text.act_fn

    attn_only: bool = False
    final_rms: bool = False
    positional_embedding_type: str = "rotary"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["dtype"] = str(self.dtype)
        return out
