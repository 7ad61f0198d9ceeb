"""What every converter is: an HF config -> HookedVLMConfig function and a tensor-name mapping.

A converter refuses a config field only when it changes the numbers and is not implemented: fields it reads are
``handled``; fields HF's forward never reads are accepted (``IGNORED_FIELDS`` and per-converter tables, each with the
reason); fields HF never reads but whose other values would describe a different model are accepted at the value HF
computes with (``PINNED_FIELDS``); legacy copies are accepted when they equal the field HF reads (``check_copy``).
Every refusal names the field, its value and why it changes the numbers. Loading fails if a checkpoint tensor maps
to nothing or a parameter of ours gets no tensor.
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


#: transformers 4.x wrote these PretrainedConfig attributes into every config.json; 5.x no longer defines them and
#: no model code of our families reads them (checked with grep in the installed transformers 5.23 source)
_V4_ATTRIBUTE = "a transformers 4.x PretrainedConfig attribute that 5.x dropped; no model code of this family reads it"

#: field -> why HF's forward pass never depends on it. Accepted with any value, in every config.
IGNORED_FIELDS: dict[str, str] = {
    **{name: _V4_ATTRIBUTE for name in (
        "add_cross_attention", "cross_attention_hidden_size", "decoder_start_token_id", "finetuning_task", "is_decoder",
        "prefix", "sep_token_id", "task_specific_params", "tf_legacy_loss", "tie_encoder_decoder", "torchscript",
        "use_bfloat16")},
    "_flash_attn_2_enabled": "a transformers 4.x attention-kernel switch; every kernel computes the same attention",
    "use_reentrant_checkpointing": "a gradient-checkpointing switch (training only: it changes how the backward "
                                   "recomputes activations, never the forward)",
    "neftune_noise_alpha": "NEFTune noise is added to the embeddings by the Trainer while fine-tuning only",
    "type": "a stray top-level copy of rope_scaling's legacy 'type' key (llava-hf/LLaVA-NeXT-Video-7B-hf's text_config); "
            "HF reads the rope type only inside rope_parameters / rope_scaling (modeling_rope_utils)",
}

#: field -> (the value HF's code computes with, why another value would change the numbers). HF never reads these
#: fields, so a config that agrees with what HF computes is accepted; any other value describes a model that HF (and
#: this converter) would build differently from the checkpoint's own code.
PINNED_FIELDS: dict[str, tuple[Any, str]] = {
    "pruned_heads": ({}, "transformers 5.x no longer prunes heads: the checkpoint's q/k/v/o tensors would be smaller "
                         "than the heads the config describes"),
}


#: sub-configs (dict values) that change the numbers and are not implemented; every other ``*_config`` dict is either
#: checked by its converter (text_config, vision_config, vq_config) or unused (SmolVLM's perceiver_config when
#: use_resampler is False, transformers.js_config for the JavaScript runtime)
REFUSED_SUB_CONFIGS = {
    "quantization_config": "the checkpoint's weights are quantized: HF dequantizes them or runs quantized kernels, "
                           "and this converter reads plain floating-point tensors only",
}


def _sub_config(key: str, value: Any) -> bool:
    return key.endswith("_config") and (value is None or isinstance(value, dict)) and key not in REFUSED_SUB_CONFIGS


class UnsupportedConfigError(ValueError):
    pass


def _reason(key: str, default: dict[str, Any], cls: str) -> str:
    if key in default:
        return (f"{cls} declares it with default {default[key]!r}, so HF's model code reads it; this converter "
                "implements only the default")
    return (f"not a field of {cls}, yet HF's model code may read it with getattr(config, {key!r}) (HF's Qwen2 reads "
            "head_dim that way), so it may change the numbers; nobody has checked it for this converter")


def check_fields(hf_config: Any, handled: set[str] | frozenset[str], where: str,
                 ignored: dict[str, str] | None = None, pinned: dict[str, tuple[Any, str]] | None = None) -> None:
    """Raise if ``hf_config`` sets a field this converter does not handle to a non-default value.

    ``handled``: fields the converter reads (implements). ``ignored``: more field -> reason HF never reads it (beside
    :data:`IGNORED_FIELDS`). ``pinned``: more field -> (value HF computes with, why another value matters).
    The error names each field, its value and why it would change the numbers.
    """
    default = type(hf_config)().to_dict()
    ignored = {**IGNORED_FIELDS, **(ignored or {})}
    pinned = {**PINNED_FIELDS, **(pinned or {})}
    cls = type(hf_config).__name__
    unhandled = {}
    for key, value in hf_config.to_dict().items():
        if key in handled or key in GENERIC_FIELDS or key in ignored or _sub_config(key, value):
            continue
        if key in REFUSED_SUB_CONFIGS:
            unhandled[key] = f"{key}={value!r} ({REFUSED_SUB_CONFIGS[key]})"
        elif key in pinned:
            if value == pinned[key][0]:
                continue
            unhandled[key] = f"{key}={value!r} (only {pinned[key][0]!r} is what HF computes: {pinned[key][1]})"
        elif key not in default or default[key] != value:
            unhandled[key] = f"{key}={value!r} ({_reason(key, default, cls)})"
    if unhandled:
        listing = "; ".join(unhandled[k] for k in sorted(unhandled))
        raise UnsupportedConfigError(
            f"{where}: this converter does not handle the config field(s) {listing}. Loading would give "
            "silently wrong numbers, so it stops here; implement the field(s) in the converter or, if HF's model "
            "never reads one, list it with the reason in converters/base.py IGNORED_FIELDS."
        )


def check_copy(hf_config: Any, field: str, value: Any, reads: str, where: str) -> None:
    """A legacy copy of a field HF reads elsewhere (``reads``, whose value is ``value``): accepted when equal."""
    copy = getattr(hf_config, field, None)
    if copy is not None and copy != value:
        raise UnsupportedConfigError(
            f"{where}: {field}={copy!r} differs from {reads}={value!r}. HF reads only {reads}; a disagreeing copy means "
            "the config was edited by hand or written by code that read the copy, and the numbers depend on which one "
            "the checkpoint was trained with. Make the two equal in config.json")


def check_legacy_vocab_size(hf_config: Any) -> None:
    """Older hub configs (llava-hf/llava-1.5-*, SmolVLM) keep a top-level copy of text_config.vocab_size; HF reads the
    text config's. Accept the copy only when the two agree."""
    check_copy(hf_config, "vocab_size", hf_config.text_config.vocab_size, "text_config.vocab_size",
               type(hf_config).__name__)


Transform = Callable[[torch.Tensor], torch.Tensor]


class Part(str):
    """A KeyMap target that is one slice of our parameter: the name (a str, as every target) plus ``index``, the
    tuple of ints / slices the checkpoint tensor fills (e.g. one expert's rows of a fused expert tensor)."""

    index: tuple

    def __new__(cls, name: str, index: tuple) -> "Part":
        out = super().__new__(cls, name)
        out.index = index
        return out

    @property
    def slot(self) -> str:  # one name per filled slice: two tensors for the same slot are duplicates
        return f"{str(self)}[{', '.join(_index_text(i) for i in self.index)}]"


def _index_text(i: Any) -> str:
    return f"{i.start}:{i.stop}" if isinstance(i, slice) else str(i)


@dataclass
class KeyMap:
    """Checkpoint tensor name -> our parameter name.

    ``aliases`` first rewrite the legacy on-disk layout into the in-memory one (both are accepted);
    ``rules`` are (regex, replacement) pairs tried in order; ``parts`` (regex, replacement, index) map a tensor
    onto one slice of our parameter (index(match) -> tuple of ints / slices; e.g. per-expert checkpoint tensors into
    the fused expert parameters), tried after the rules; ``ignored`` lists (regex, reason) for tensors deliberately
    not loaded; ``transforms`` maps our names (regex) to a layout change.
    """

    aliases: list[tuple[str, str]] = field(default_factory=list)
    rules: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)
    transforms: list[tuple[str, Transform]] = field(default_factory=list)
    parts: list[tuple[str, str, Callable[[re.Match], tuple]]] = field(default_factory=list)
    # like parts, but the slice depends on the checkpoint tensor's shape too: index(match, shape) (Molmo 2's
    # embedding, stored as two tables whose split differs between the hub files and save_pretrained's)
    sized_parts: list[tuple[str, str, Callable[[re.Match, tuple[int, ...]], tuple]]] = field(default_factory=list)

    def canonical(self, key: str) -> str:
        for pattern, repl in self.aliases:  # applied in order, each at most once
            key = re.sub(pattern, repl, key, count=1)
        return key

    def target(self, key: str, shape: tuple[int, ...] | None = None) -> str | None:
        """Our parameter name, or None when the tensor is deliberately ignored; KeyError when unknown. ``shape``: the
        checkpoint tensor's (needed by ``sized_parts`` only)."""
        key = self.canonical(key)
        for pattern, repl in self.rules:
            if re.fullmatch(pattern, key):
                return re.sub(pattern, repl, key)
        for pattern, repl, index in self.parts:
            match = re.fullmatch(pattern, key)
            if match:
                return Part(match.expand(repl), index(match))
        for pattern, repl, sized_index in self.sized_parts:
            match = re.fullmatch(pattern, key)
            if match:
                if shape is None:
                    raise ValueError(f"{key} fills a slice of our parameter that depends on its shape: pass its shape")
                return Part(match.expand(repl), sized_index(match, tuple(shape)))
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
    module: str | None = None  # the family module that declares it (set by the registry)
