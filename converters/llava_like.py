"""The LLaVA-like families as declarations: a vision tower, a projector and a decoder LM, found by model_type / kind.

A family module holds one :class:`LlavaLike` (``CONVERTER = LlavaLike(...).converter()``): its architecture, the
top-level HF config fields it handles, which towers (``vision_config.model_type``) and LMs (``text_config.model_type``)
it accepts, its projector kind, where HF keeps each part in the checkpoint, and the few family-specific pieces as
small functions (feature layers / selection, projector settings, a check, extra cfg entries). Everything else --
the config and key rules of each part -- comes from ``converters/parts.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from hooked_vlm.config import HookedVLMConfig, TokenRoles

from .base import Converter, KeyMap, check_fields, check_legacy_vocab_size
from .parts import LM_PARTS, TOWER_PARTS, lm_part, projector_part, tower_part

# save_pretrained writes the legacy layout; the in-memory (and newer hub) layout is under "model."
LLAVA_ALIASES = (
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^vision_tower\.", "model.vision_tower."),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
)
#: the decoder LMs a LLaVA-like family accepts unless it says otherwise
DECODER_LMS = ("llama", "mistral", "qwen2", "qwen3", "granite")


def feature_layers(hf: Any) -> tuple[int, ...]:
    """HF's ``vision_feature_layer``: one index into the tower's hidden states, or a list (concatenated)."""
    layer = hf.vision_feature_layer
    return (layer,) if isinstance(layer, int) else tuple(layer)


def select_strategy(hf: Any) -> str:
    return hf.vision_feature_select_strategy


def mlp_settings(hf: Any) -> dict[str, Any]:
    return {"act_fn": hf.projector_hidden_act, "bias": hf.multimodal_projector_bias}


@dataclass(frozen=True)
class LlavaLike:
    """One LLaVA-like family: tower -> projector -> decoder LM, image features spliced at the image token."""

    architecture: str
    fields: frozenset[str]  # top-level HF config fields handled (sub-configs are checked by their parts)
    towers: tuple[str, ...]  # accepted vision_config.model_type (keys of TOWER_PARTS)
    projector: str  # PROJECTOR_PARTS kind
    lms: tuple[str, ...] = DECODER_LMS  # accepted text_config.model_type (keys of LM_PARTS)
    lm_prefix: str = "model.language_model"
    tower_prefix: str = "model.vision_tower"
    projector_prefix: str = "model.multi_modal_projector"
    aliases: tuple[tuple[str, str], ...] = LLAVA_ALIASES
    feature_layers: Callable[[Any], tuple[int, ...]] = feature_layers
    feature_select: Callable[[Any], str] = select_strategy
    projector_settings: Callable[[Any], dict[str, Any]] = mlp_settings
    check: Callable[[Any], None] | None = None  # family-specific refusals, given the HF config
    extra: Callable[[Any], dict[str, Any]] | None = None  # more cfg.extra entries (overrides the tower's pipeline)
    role_extra: Callable[[Any], dict[str, tuple[int, ...]]] | None = None  # more named token roles
    roles: Callable[[Any], dict[str, Any]] | None = None  # more TokenRoles fields (boi / eoi ids, projector markers)
    legacy_vocab_size: bool = True  # a top-level copy of text_config.vocab_size is accepted when equal
    ignored: dict[str, str] | None = None  # top-level fields HF never reads, with the reason
    ignored_tensors: tuple[tuple[str, str], ...] = ()
    last_hidden_state: bool = False  # HF reads the tower's last_hidden_state (after its final norm), not hidden_states  # (regex, reason): checkpoint tensors deliberately not loaded

    def config(self, hf: Any) -> HookedVLMConfig:
        where = type(hf).__name__
        check_fields(hf, self.fields, where, self.ignored)
        if self.legacy_vocab_size:
            check_legacy_vocab_size(hf)
        tc, vc = hf.text_config, hf.vision_config
        tower = tower_part(vc, self.towers, where, self.last_hidden_state)
        lm = lm_part(tc, self.lms, where)
        if self.check is not None:
            self.check(hf)
        vision = tower.config(vc, tuple(self.feature_layers(hf)), self.feature_select(hf))
        text = lm.config(tc)
        # a tower whose output is not its residual stream says its width (SAM: the neck's channels)
        d_in = vision.extra.get("d_features") or vision.tower.d_model * len(vision.feature_layers)
        projector = projector_part(self.projector).config(d_in, text.d_model, self.projector_settings(hf))
        extra = {**tower.pipeline, **(self.extra(hf) if self.extra else {}),
                 "parts": {"tower": vc.model_type, "projector": self.projector, "lm": tc.model_type}}
        return HookedVLMConfig(
            architecture=self.architecture,
            text=text,
            d_vocab=tc.vocab_size,
            vision=vision,
            projector=projector,
            roles=TokenRoles(image_token_id=hf.image_token_id, pad_token_id=tc.pad_token_id,
                             bos_token_id=tc.bos_token_id, eos_token_id=tc.eos_token_id,
                             extra=self.role_extra(hf) if self.role_extra else {},
                             **(self.roles(hf) if self.roles else {})),
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)
                                     or getattr(tc, "tie_word_embeddings", False)),
            extra=extra,
        )

    def keymap(self, cfg: HookedVLMConfig) -> KeyMap:
        parts = cfg.extra["parts"]
        tower, lm = TOWER_PARTS[parts["tower"]], LM_PARTS[parts["lm"]]
        tower = tower.last_hidden_state if self.last_hidden_state else tower
        return KeyMap(
            aliases=list(self.aliases) + tower.aliases(self.tower_prefix),
            rules=lm.rules(self.lm_prefix) + tower.rules(self.tower_prefix)
            + projector_part(parts["projector"]).rules(self.projector_prefix),
            ignored=tower.ignored(self.tower_prefix) + list(self.ignored_tensors),
            transforms=list(lm.transforms),
        )

    def finalize(self, cfg: HookedVLMConfig, processor: Any) -> None:
        finalize = TOWER_PARTS[cfg.extra["parts"]["tower"]].finalize
        if finalize is not None:
            finalize(cfg, processor)

    def converter(self) -> Converter:
        return Converter(architectures=(self.architecture,), make_config=self.config, make_keymap=self.keymap,
                         finalize=self.finalize)
