"""Turning images + prompts into model inputs through the checkpoint's own HF processor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from .processors import ProcessorUnavailableError, UnavailableProcessor

if TYPE_CHECKING:
    from .model import HookedVLM


def prepare_inputs(model: "HookedVLM", images: Any = None, text: str | Sequence[str] | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
    """images: a PIL image, a list of them (one per placeholder, in order), or None; text: prompt(s).

    The prompts must contain the family's image placeholder (e.g. ``<image>`` for LLaVA) once per
    image. Extra keyword arguments go to the processor (e.g. ``padding_side="left"``).
    """
    processor = model.processor
    if processor is None:
        raise ProcessorUnavailableError(
            "this model has no HF processor (it was loaded or built with processor=None); pass processor=... to "
            "from_pretrained or set model.processor = AutoProcessor.from_pretrained(...), or build inputs with the "
            "family's processor and call model(**inputs)"
        )
    if isinstance(processor, UnavailableProcessor):
        processor.raise_error()
    if text is None:
        raise ValueError("text is required: the prompt(s), with one image placeholder per image")
    prompts = [text] if isinstance(text, str) else list(text)
    kwargs.setdefault("padding", True)
    if images is not None and not isinstance(images, (list, tuple)):
        images = [images]
    try:
        out = _run_processor(model, processor, images, prompts, kwargs)
    except (ValueError, IndexError, RuntimeError) as err:  # HF's "number of <image> tokens ..." and the like
        hint = _placeholder_hint(processor, images, prompts)
        if hint is None:
            raise
        raise ValueError(f"{hint} (the processor said: {err})") from err
    roles, ids = model.cfg.roles, dict(out).get("input_ids")
    if images and roles is not None and isinstance(ids, torch.Tensor) and not bool((ids == roles.image_token_id).any()):
        # some processor versions accept such prompts silently; the forward would then fail on the image count
        hint = _placeholder_hint(processor, images, prompts)
        if hint is not None:
            raise ValueError(hint)
    result: dict[str, torch.Tensor] = {}
    for k, v in dict(out).items():
        if isinstance(v, torch.Tensor):
            v = v.to(model.device)
            if v.is_floating_point():
                v = v.to(model.dtype)
        result[k] = v
    return result


#: processor attributes that name the text placeholder of an image (Gemma 3's prompts hold boi_token)
PLACEHOLDER_ATTRS = ("image_token", "boi_token")


def _placeholder_hint(processor: Any, images: Any, prompts: list[str]) -> str | None:
    """How to fix prompts that hold no image placeholder while images were given; None when that is not the cause."""
    if not images:
        return None
    marks = [m for m in (getattr(processor, a, None) for a in PLACEHOLDER_ATTRS) if isinstance(m, str) and m]
    if not marks or any(m in p for m in marks for p in prompts):
        return None
    mark = marks[0]
    return (f"{len(images)} image(s) were given but the prompt(s) hold no image placeholder "
            f"({' or '.join(repr(m) for m in marks)}); put one {mark!r} in the text where each image goes, e.g. "
            f"text={('USER: ' + mark + chr(10) + 'What is this? ASSISTANT:')!r}, or build the prompt with the "
            "processor's chat template (processor.apply_chat_template with an image entry)")


def _run_processor(model: "HookedVLM", processor: Any, images: Any, prompts: list[str], kwargs: dict) -> Any:
    hook = model.cfg.extra.get("prepare_inputs_fn")
    if hook is not None:
        return hook(model, images=images, text=prompts, **kwargs)
    if _is_tokenizer(processor):  # the checkpoint ships a tokenizer but no image processor
        if images is not None:
            raise ProcessorUnavailableError(
                "this model's processor is only a tokenizer (the checkpoint has no preprocessor_config.json / "
                "processor_config.json), so it cannot turn images into pixel_values. Text-only prompts work; for "
                "images pass processor=AutoProcessor.from_pretrained('<hub id>') to from_pretrained (or set "
                "model.processor), or build inputs with the family's processor and call model(**inputs)"
            )
        return processor(prompts, return_tensors="pt", **kwargs)
    return processor(images=images, text=prompts, return_tensors="pt", **kwargs)


def _is_tokenizer(processor: Any) -> bool:
    from transformers import PreTrainedTokenizerBase

    return isinstance(processor, PreTrainedTokenizerBase)
