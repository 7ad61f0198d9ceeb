"""What every converter is: an HF config -> HookedVLMConfig function and a tensor-name mapping.

A converter refuses HF config fields it does not handle (when they differ from the HF default),
and loading fails if a checkpoint tensor maps to nothing or a parameter of ours gets no tensor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from hooked_vlm.config import HookedVLMConfig

#: fields every PretrainedConfig has that never change the math
GENERIC_FIELDS = frozenset({
    "_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "torch_dtype", "id2label", "label2id",
    "is_encoder_decoder", "model_type", "output_attentions", "output_hidden_states", "problem_type",
    "return_dict", "transformers_version", "use_cache", "initializer_range", "initializer_factor",
    "attention_dropout", "dropout", "pad_token_id", "bos_token_id", "eos_token_id", "use_return_dict",
    "tokenizer_class", "_attn_implementation_autoset", "attn_implementation", "output_scores",
    "is_composition",  # a legacy marker in older hub configs (e.g. mistral-community/pixtral-12b)
})


class UnsupportedConfigError(ValueError):
    pass


def check_fields(hf_config: Any, handled: set[str] | frozenset[str], where: str) -> None:
    """Raise if ``hf_config`` sets a field this converter does not handle to a non-default value."""
    default = type(hf_config)().to_dict()
    unhandled = {}
    for key, value in hf_config.to_dict().items():
        if key in handled or key in GENERIC_FIELDS or key.endswith("_config"):
            continue
        if key not in default or default[key] != value:
            unhandled[key] = value
    if unhandled:
        listing = ", ".join(f"{k}={v!r}" for k, v in sorted(unhandled.items()))
        raise UnsupportedConfigError(
            f"{where}: this converter does not handle the config field(s) {listing}. Loading would give "
            "silently wrong numbers, so it stops here; extend the converter to support them."
        )


def check_legacy_vocab_size(hf_config: Any) -> None:
    """Older hub configs (llava-hf/llava-1.5-*) keep a top-level copy of text_config.vocab_size; HF reads the
    text config's. Accept the copy only when the two agree."""
    top = getattr(hf_config, "vocab_size", None)
    if top is not None and top != hf_config.text_config.vocab_size:
        raise UnsupportedConfigError(f"vocab_size={top} differs from text_config.vocab_size="
                                     f"{hf_config.text_config.vocab_size}; HF reads the latter")


Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class KeyMap:
    """Checkpoint tensor name -> our parameter name.

    ``aliases`` first rewrite the legacy on-disk layout into the in-memory one (both are accepted);
    ``rules`` are (regex, replacement) pairs tried in order; ``ignored`` lists (regex, reason) for
    tensors deliberately not loaded; ``transforms`` maps our names (regex) to a layout change.
    """

    aliases: list[tuple[str, str]] = field(default_factory=list)
    rules: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    transforms: list[tuple[str, Transform]] = field(default_factory=list)

    def canonical(self, key: str) -> str:
        for pattern, repl in self.aliases:  # applied in order, each at most once
            key = re.sub(pattern, repl, key, count=1)
        return key

    def target(self, key: str) -> str | None:
        """Our parameter name, or None when the tensor is deliberately ignored; KeyError when unknown."""
        key = self.canonical(key)
        for pattern, repl in self.rules:
            if re.fullmatch(pattern, key):
                return re.sub(pattern, repl, key)
        for pattern, _reason in self.ignored:
            if re.fullmatch(pattern, key):
                return None
        raise KeyError(key)

    def transform(self, ours: str) -> Transform | None:
        for pattern, fn in self.transforms:
            if re.fullmatch(pattern, ours):
                return fn
        return None


@dataclass
class Converter:
    architectures: tuple[str, ...]
    make_config: Callable[[Any], HookedVLMConfig]  # HF config object -> ours
    make_keymap: Callable[[HookedVLMConfig], KeyMap]
    load_processor: Callable[[str], Any] | None = None  # folder -> processor (default: AutoProcessor)
    # (our config, processor or None) -> None: fill what only the processor knows (e.g. marker token ids)
    finalize: Callable[[HookedVLMConfig, Any], None] | None = None
