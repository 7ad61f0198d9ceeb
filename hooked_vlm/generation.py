"""Autoregressive generation with a KV cache, matching HF's ``generate`` token for token.

Hooks added before the call (``model.hooks(...)``, ``add_hook``) or passed as ``fwd_hooks``
stay active on every step; on each step hook functions see ``hook.spans`` (the prompt's spans
extended by the generated tokens, which are ``text`` and ``generated``) and
``hook.query_positions`` (the absolute positions computed in this step).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from .model import HookedVLM


@torch.no_grad()
def generate(
    model: "HookedVLM",
    input_ids: Tensor | dict | None = None,
    pixel_values: Tensor | None = None,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    stop_at_eos: bool = True,
    use_kv_cache: bool = True,
    return_type: str = "auto",
    fwd_hooks: list | None = None,
    seed: int | None = None,
    verbose: bool = False,
    **extras: Any,
) -> Any:
    """Generate ``max_new_tokens`` tokens.

    return_type: "tokens" (HF-style [batch, prompt + new] ids), "str" (decoded new text per item)
    or "auto" (str when the model has a tokenizer). Position ids follow HF's generate
    (cumulative sum of the attention mask), so left-padded batches give HF's tokens.

    Right-padded (or otherwise not left-padded) prompts are first re-laid-out left-padded: each row's
    real tokens move to the end of the row in their order, per-position inputs (``mm_token_type_ids``,
    ``token_type_ids``) move with them, images and M-RoPE positions (computed from the real tokens)
    are unchanged. New tokens then follow each row's real tokens, and the result equals generating
    from the left-padded batch token for token. Hooks, ``hook.spans`` and the returned
    ``return_type="tokens"`` ids use that left-padded layout: ``out[:, input_ids.shape[1]:]`` are the
    new tokens of every row, whichever side the prompt was padded on.

    ``input_ids`` may also be text (a string or a list of strings, TransformerLens-style): a text-only prompt,
    tokenized and left-padded; the result is still the new text per prompt (TL returns prompt + new text).
    """
    from .model import KVCache

    if isinstance(input_ids, dict):
        inputs = dict(input_ids)
        return generate(model, **inputs, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                        top_k=top_k, top_p=top_p, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                        stop_at_eos=stop_at_eos, use_kv_cache=use_kv_cache, return_type=return_type,
                        fwd_hooks=fwd_hooks, seed=seed, verbose=verbose, **extras)
    if isinstance(input_ids, str) or (isinstance(input_ids, (list, tuple)) and input_ids
                                      and all(isinstance(t, str) for t in input_ids)):
        input_ids, attention_mask = _text_prompt(model, input_ids, pixel_values, attention_mask)
    tokens = input_ids.to(model.device)
    b = tokens.shape[0]
    mask = torch.ones_like(tokens) if attention_mask is None else attention_mask.to(model.device).long()
    relaid = not is_left_padded(mask)
    if relaid:
        tokens, mask, extras = to_left_padding(tokens, mask, extras)
    roles = model.cfg.roles
    if eos_token_id is None and roles is not None:
        eos_token_id = roles.eos_token_id
    eos = torch.as_tensor([] if eos_token_id is None else eos_token_id, device=model.device).flatten()
    if pad_token_id is None:
        pad_token_id = (roles.pad_token_id if roles is not None else None)
        if pad_token_id is None:
            pad_token_id = int(eos[0]) if len(eos) else 0
    check_sampling(do_sample, temperature, top_k, top_p)
    generator = torch.Generator(device=model.device).manual_seed(seed) if seed is not None else None

    hooks_ctx = model.hooks(fwd_hooks=fwd_hooks) if fwd_hooks else contextlib.nullcontext()
    with hooks_ctx:
        if relaid and any(hp.fwd_hooks for hp in model.hook_dict.values()):
            warnings.warn("the prompts are not left-padded: generate re-lays them out left-padded, and hooks see "
                          "positions in that layout (use hook.spans, or pad on the left: padding_side='left')")
        cache = KVCache(model.cfg) if use_kv_cache else None
        offset = model.cfg.text.position_offset  # e.g. PaliGemma: positions start at 1
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0) + offset
        spans = None
        logits = model(tokens, pixel_values=pixel_values, attention_mask=mask, position_ids=positions,
                       kv_cache=cache, logits_to_keep=1, **extras)  # the last position's logits only, as HF
        spans = model.run_state.spans
        prompt_spans = spans
        unfinished = torch.ones(b, dtype=torch.bool, device=model.device)
        new_tokens = []
        for step in tqdm(range(max_new_tokens), disable=not verbose, desc="generating"):
            next_tok = _pick(logits[:, -1].float(), do_sample, temperature, top_k, top_p, generator)
            next_tok = torch.where(unfinished, next_tok, torch.full_like(next_tok, pad_token_id))
            new_tokens.append(next_tok)
            if stop_at_eos and len(eos):
                unfinished &= ~torch.isin(next_tok, eos)
            if step == max_new_tokens - 1 or not unfinished.any():
                break
            mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=mask.device)], 1)
            positions = positions[:, -1:] + 1 if use_kv_cache else (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0) + offset
            spans = prompt_spans.extend(len(new_tokens))
            if use_kv_cache:
                logits = model(next_tok[:, None], attention_mask=mask, position_ids=positions, kv_cache=cache, spans=spans)
            else:
                seq = torch.cat([tokens, torch.stack(new_tokens, 1)], 1)
                logits = model(seq, pixel_values=pixel_values, attention_mask=mask, position_ids=positions, spans=spans,
                               logits_to_keep=1, **extras)
    out = torch.cat([tokens, torch.stack(new_tokens, 1)], 1)
    if return_type == "tokens" or (return_type == "auto" and model.tokenizer is None):
        return out
    if return_type not in ("str", "auto"):
        raise ValueError(f"return_type must be 'tokens', 'str' or 'auto', got {return_type!r}")
    return [model.tokenizer.decode(row[tokens.shape[1]:], skip_special_tokens=True) for row in out]


def _text_prompt(model: "HookedVLM", text: Any, pixel_values: Any, attention_mask: Any) -> tuple[Tensor, Tensor]:
    """A text-only prompt (a string or a list of strings, as TransformerLens's generate takes): tokenized with the
    model's tokenizer, left-padded."""
    if pixel_values is not None or attention_mask is not None:
        raise ValueError("generate(text) takes a text-only prompt; for images use "
                         "model.generate(**model.prepare_inputs(images=..., text=...))")
    enc = model._require_tokenizer()([text] if isinstance(text, str) else list(text), return_tensors="pt",
                                     padding=True, padding_side="left")
    return enc["input_ids"], enc["attention_mask"]


#: inputs with one entry per token position ([batch, pos, ...]); they move with the tokens when re-laying out
PER_POSITION_INPUTS = ("mm_token_type_ids", "token_type_ids", "cross_attention_mask")


def is_left_padded(mask: Tensor) -> bool:
    """True when every row's padding (0) comes before all its real tokens (1)."""
    return bool((mask[:, 1:] >= mask[:, :-1]).all())


def to_left_padding(tokens: Tensor, mask: Tensor, extras: dict[str, Any]) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Move each row's real tokens (in order) after its padding; per-position inputs move with them."""
    order = torch.sort(mask, dim=1, stable=True).indices  # padding (0) first, real tokens (1) after, order kept
    moved = dict(extras)
    for key in PER_POSITION_INPUTS:
        value = extras.get(key)
        if value is None:
            continue
        if not isinstance(value, Tensor) or tuple(value.shape[:2]) != tuple(tokens.shape):
            raise ValueError(f"{key} must be [batch, pos] like input_ids {tuple(tokens.shape)}, got "
                             f"{tuple(getattr(value, 'shape', ()))}")
        index = order.to(value.device).reshape(*order.shape, *([1] * (value.ndim - 2))).expand_as(value)
        moved[key] = value.gather(1, index)
    return tokens.gather(1, order), mask.gather(1, order), moved


def check_sampling(do_sample: bool, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """HF's checks: temperature > 0, top_k >= 0 (0 = off), 0 <= top_p <= 1; a warning when sampling arguments
    are given without do_sample=True (they are then ignored: greedy decoding)."""
    if not do_sample:
        given = [f"{n}={v}" for n, v, off in (("temperature", temperature, 1.0), ("top_k", top_k, None), ("top_p", top_p, None))
                 if v != off]
        if given:
            warnings.warn(f"{', '.join(given)} ignored: do_sample=False decodes greedily (pass do_sample=True to sample)")
        return
    if not temperature > 0:
        raise ValueError(f"temperature must be a positive float when sampling, got {temperature}; use do_sample=False "
                         "for greedy decoding")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k must be a non-negative int (0 or None: no top-k filter), got {top_k!r}")
    if top_p is not None and not 0.0 <= float(top_p) <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")


def warp_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """HF's sampling warpers in HF's order: TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
    (min_tokens_to_keep=1; top_k 0/None and top_p 1.0/None are off). Filtered logits become -inf.

    top_p keeps the smallest set of most probable tokens whose probability reaches top_p (HF: a token goes when
    the cumulative probability of it and all less probable tokens is <= 1 - top_p)."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = logits.sort(-1, descending=False)
        remove = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        remove[..., -1:] = False  # keep at least the most probable token
        logits = logits.masked_fill(remove.scatter(-1, idx, remove), float("-inf"))
    return logits


def _pick(logits: Tensor, do_sample: bool, temperature: float, top_k: int | None, top_p: float | None, generator) -> Tensor:
    """The next token of each row: argmax, or a sample from softmax(warp_logits(...)) as HF's generate draws it."""
    if not do_sample:
        return logits.argmax(-1)
    probs = warp_logits(logits, temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
