"""Memory plans computed on the meta device: KV cache and a full ``run_with_cache`` of the language model.

The activation sizes are not a formula per hook name: the LM's blocks run on meta tensors (no
memory, no weights) with a forward hook on every hook point, so every hook the fast path fires
reports its real shape. The hooks that only the explicit attention path fires are the quadratic
ones: ``attn.hook_attn_scores`` and ``attn.hook_pattern`` ([batch, head, q, k], at the model dtype)
and ``attn.hook_mask`` ([batch, 1, q, k], bool). A full cache hooks them all.
"""

from __future__ import annotations

from typing import Any

import torch

from .components.masks import AttentionMask

QUADRATIC_PER_HEAD = ("attn.hook_attn_scores", "attn.hook_pattern")
QUADRATIC_MASK = "attn.hook_mask"


def kv_cache_bytes(text: Any, tokens: int, element_size: int, batch: int = 1) -> int:
    """Keys and values of every layer, as ``KVCache`` keeps them: [batch, pos, kv_head, d_head] each, all positions."""
    return 2 * text.n_layers * batch * tokens * text.n_key_value_heads * text.d_head * element_size


def is_lm_hook(name: str) -> bool:
    return not name.startswith(("vision.", "projector.")) and name != "hook_image_embeds"


def lm_activation_numels(model: Any, tokens: int) -> tuple[dict[str, tuple[int, bool]], list[str]]:
    """{LM hook name: (numel, is_bool)} of a text-only forward of ``tokens`` positions, batch 1, and the
    LM hook names it could not size. ``model`` may (and should) live on the meta device."""
    seen: dict[str, tuple[int, bool]] = {}
    handles = []
    for name, hp in model.hook_dict.items():
        if is_lm_hook(name):
            handles.append(hp.register_forward_hook(
                lambda _m, _i, out, name=name: seen.__setitem__(name, (out.numel(), out.dtype == torch.bool))))
    try:
        t = model.cfg.text
        with torch.no_grad():
            resid = model.hook_embed(model.embed(torch.zeros(1, tokens, dtype=torch.long, device="meta")))
            mask = AttentionMask(causal=t.causal, key_padding=None, k_len=tokens, sliding_window=t.sliding_window,
                                 query_positions=torch.arange(tokens, device="meta"))
            rotary = None
            if model.rotary is not None:
                rotary = tuple(torch.empty(1, tokens, 1, t.d_head, device="meta") for _ in range(2))
            for block in model.blocks:
                resid = block(resid, mask, rotary)
            model.ln_final(resid)
    finally:
        for h in handles:
            h.remove()
    unsized = []
    for name in model.hook_dict:
        if not is_lm_hook(name) or name in seen:
            continue
        if name.endswith(QUADRATIC_PER_HEAD):
            seen[name] = (t.n_heads * tokens * tokens, False)
        elif name.endswith(QUADRATIC_MASK):
            seen[name] = (tokens * tokens, True)
        else:
            unsized.append(name)
    return seen, unsized


def activation_bytes(model: Any, tokens: int, dtype_bytes: dict[str, int]) -> tuple[dict[str, int], str]:
    """Bytes of a full LM ``run_with_cache`` per dtype, and a sentence saying what was assumed."""
    numels, unsized = lm_activation_numels(model, tokens)
    out = {d: sum(n * (1 if is_bool else b) for n, is_bool in numels.values()) for d, b in dtype_bytes.items()}
    quadratic = sum(n for name, (n, _) in numels.items() if name.endswith(QUADRATIC_PER_HEAD + (QUADRATIC_MASK,)))
    total = sum(n for n, _ in numels.values())
    text = (f"batch 1, {tokens} text positions, every language-model hook point cached; hook_attn_scores and "
            f"hook_pattern are [head, pos, pos] and hook_mask [pos, pos] bool per layer: quadratic in tokens, "
            f"{100 * quadratic / max(total, 1):.0f}% of the elements here; vision-tower and projector hooks "
            "add memory per image, not included")
    if unsized:
        text += f"; not sized (not fired by a text-only forward): {', '.join(unsized)}"
    return out, text
