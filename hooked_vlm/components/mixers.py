"""Token mixers chosen per layer from ``TowerConfig.layer_types`` (docs/architecture.md section 2).

``MIXERS[kind]`` says, for one ``layer_types`` entry, under which attribute of the block the mixer sits (so hook names
say what a hook is: ``blocks.{l}.attn.*`` on attention layers, ``blocks.{l}.linear_attn.*`` on Gated DeltaNet
layers), how the mixer is built from the tower config, and which per-layer state object the KV cache holds for it.
Every mixer has one call signature: ``mixer(x, mask, rotary, state) -> [batch, pos, d_model]``.

Adding a kind: its class in its own file, one :func:`register_mixer` call (here, or in the module defining it when
that module imports this one), its state class, hooks with shape comments, and what each analysis does on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..config import LAYER_TYPES, TowerConfig
from .attention import Attention, LayerKVCache
from .fused_qkv import FusedQKVAttention
from .gated_deltanet import GatedDeltaNet, RecurrentState


@dataclass(frozen=True)
class MixerKind:
    attr: str  # the block attribute holding the mixer (hook names: blocks.{l}.{attr}.hook_*)
    build: Callable[[TowerConfig, int], nn.Module]  # (tower config, layer index) -> the mixer
    state: type  # its class makes a fresh per-layer state for the KV cache (section 3 of docs/architecture.md)
    attention: bool = False  # True: the mixer has an attention pattern (hook_pattern / hook_mask); analyses read it


MIXERS: dict[str, MixerKind] = {}


class MixerNotRegisteredError(KeyError):
    """A ``layer_types`` kind that names no registered mixer class (yet)."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def register_mixer(kind: str, attr: str, build: Callable[[TowerConfig, int], nn.Module], state: type,
                   attention: bool = False) -> None:
    if kind not in LAYER_TYPES:
        raise ValueError(f"layer kind {kind!r} is not in hooked_vlm.config.LAYER_TYPES {LAYER_TYPES}; add it there first")
    MIXERS[kind] = MixerKind(attr, build, state, attention)


def mixer_kind(kind: str) -> MixerKind:
    if kind not in MIXERS:
        raise MixerNotRegisteredError(
            f"layer kind {kind!r} has no registered token mixer (registered: {', '.join(sorted(MIXERS))}); its class "
            "is not implemented yet, so a model with such layers cannot be built: register it with "
            "hooked_vlm.components.mixers.register_mixer")
    return MIXERS[kind]


def layer_kind(cfg: TowerConfig, layer: int) -> str:
    """The ``layer_types`` entry of ``layer`` (None = every layer full attention, or sliding with a window)."""
    if cfg.layer_types is not None:
        return cfg.layer_types[layer]
    return "sliding_attention" if cfg.sliding_window is not None else "full_attention"


def layer_kinds(cfg: TowerConfig) -> tuple[str, ...]:
    return tuple(layer_kind(cfg, l) for l in range(cfg.n_layers))


def _attention(cfg: TowerConfig, layer: int) -> nn.Module:
    """use_rope False: a NoPE layer (Cohere2's full layers); the layer kind's geometry (Gemma 4 global layers: their
    own d_head / kv heads, k_eq_v); shares_kv: a KV-sharing layer (Gemma 4), reading kv_source(layer)'s state."""
    cls = FusedQKVAttention if cfg.fused_qkv else Attention  # fused_qkv: one qkv Linear, q/k/v_proj its row views
    return cls(cfg.attention_cfg(layer), use_rope=cfg.layer_uses_rope(layer),
               k_eq_v=layer_kind(cfg, layer) in cfg.k_eq_v_layer_types, shares_kv=cfg.kv_source(layer) is not None)


# chunked_attention (Llama 4): the same Attention class; its chunked mask comes from mask_policy.layer_masks
for _kind in ("full_attention", "sliding_attention", "chunked_attention"):
    register_mixer(_kind, "attn", _attention, LayerKVCache, attention=True)
register_mixer("linear_attention", "linear_attn", lambda cfg, layer: GatedDeltaNet(cfg), RecurrentState)

from .short_conv import ConvState, ShortConv  # noqa: E402  (LFM2 short convolution)

register_mixer("conv", "conv", lambda cfg, layer: ShortConv(cfg), ConvState)

from . import cross_attention  # noqa: E402,F401  (Mllama cross-attention registers itself in its module)

from .rel_pos_attention import RelPosAttention  # noqa: E402  (SAM's windowed / global encoder attention)

# encoder-only mixers (vision towers, which run without a KV cache; the mixer raises if given a state)
register_mixer("window_rel_pos_attention", "attn", lambda cfg, layer: RelPosAttention(cfg, windowed=True),
               LayerKVCache, attention=True)
register_mixer("global_rel_pos_attention", "attn", lambda cfg, layer: RelPosAttention(cfg, windowed=False),
               LayerKVCache, attention=True)
