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


def _n_layers_of(text: Any, kinds: tuple[str, ...]) -> int:
    from .components.mixers import layer_kinds

    return sum(kind in kinds for kind in layer_kinds(text))


def kv_cache_bytes(text: Any, tokens: int, element_size: int, batch: int = 1) -> int:
    """Keys and values of every attention layer, as ``KVCache`` keeps them: [batch, pos, kv_head, d_head] each, all
    positions (linear / conv layers keep a constant-size state instead: :func:`recurrent_state_bytes`)."""
    from .config import ATTENTION_LAYER_TYPES

    n_attention = _n_layers_of(text, ATTENTION_LAYER_TYPES)
    return 2 * n_attention * batch * tokens * text.n_key_value_heads * text.d_head * element_size


def recurrent_state_bytes(text: Any, element_size: int, batch: int = 1) -> int:
    """The state ``KVCache`` keeps per linear-attention layer, whatever the number of tokens: the causal-conv window
    [batch, conv_dim, conv_kernel - 1] (model dtype) and the delta-rule state [batch, head, d_k, d_v] (float32, as HF's
    torch path keeps it); per short-convolution layer the conv window [batch, d_model, kernel - 1] (model dtype)."""
    la, sc = text.linear_attention, text.short_conv
    n_linear = _n_layers_of(text, ("linear_attention",)) if la is not None else 0
    n_conv = _n_layers_of(text, ("conv",)) if sc is not None else 0
    total = 0
    if n_linear:
        total += n_linear * batch * (la.conv_dim * (la.conv_kernel - 1) * element_size
                                     + la.n_value_heads * la.d_key * la.d_value * 4)
    if n_conv:
        total += n_conv * batch * text.d_model * (sc.kernel - 1) * element_size
    return total


def is_lm_hook(name: str) -> bool:
    return not name.startswith(("vision.", "projector.")) and name != "hook_image_embeds"


def _record(model: Any, wanted: Any, run: Any) -> tuple[dict[str, tuple[tuple[int, ...], bool]], list[str]]:
    """Run ``run()`` with a forward hook on every hook point ``wanted(name)`` accepts: {name: (shape, is_bool)}.
    Hooks the fast path does not fire are sized from their block: the quadratic attention ones
    ([batch, head, q, k] and the [batch, 1, q, k] bool mask, q = k = the block's positions); the rest are listed."""
    seen: dict[str, tuple[tuple[int, ...], bool]] = {}
    handles = [hp.register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, (tuple(out.shape),
                                                                                                out.dtype == torch.bool)))
               for name, hp in model.hook_dict.items() if wanted(name)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    unsized = []
    for name in model.hook_dict:
        if not wanted(name) or name in seen:
            continue
        cross = name.rpartition(".cross_attn.")[0]
        keys = seen.get(f"{cross}.cross_attn.hook_k", ((), False))[0]
        if cross and len(keys) == 4 and name.endswith(QUADRATIC_PER_HEAD + (QUADRATIC_MASK,)):  # [batch, head | 1, q, key]
            q_len = seen[f"{cross}.hook_resid_pre"][0][1]
            heads = 1 if name.endswith(QUADRATIC_MASK) else model.get_submodule(f"{cross}.cross_attn").cfg.n_heads
            seen[name] = ((keys[0], heads, q_len, keys[1]), name.endswith(QUADRATIC_MASK))
            continue
        block = name.rpartition(".attn.")[0]
        resid = seen.get(f"{block}.hook_resid_pre", ((), False))[0]
        attn = model.get_submodule(f"{block}.attn") if block and len(resid) == 3 else None
        if hasattr(attn, "pattern_shape") and name.endswith(QUADRATIC_PER_HEAD):  # windowed attention (SAM)
            seen[name] = (attn.pattern_shape(resid[0]), False)
            continue
        heads = attn.cfg.n_heads if attn is not None else None
        conv_block = name.rpartition(".conv.")[0] if name.endswith(".conv.hook_tap_mask") else ""
        conv_resid = seen.get(f"{conv_block}.hook_resid_pre", ((), False))[0] if conv_block else ()
        if len(conv_resid) == 3:  # the short conv's taps, fired only when hooked: bool [batch, pos, kernel]
            kernel = model.get_submodule(f"{conv_block}.conv").kernel
            seen[name] = ((conv_resid[0], conv_resid[1], kernel), True)
        elif heads and name.endswith(QUADRATIC_PER_HEAD):
            seen[name] = ((resid[0], heads, resid[1], resid[1]), False)
        elif heads and name.endswith(QUADRATIC_MASK):
            seen[name] = ((resid[0], 1, resid[1], resid[1]), True)
        else:
            unsized.append(name)
    return seen, unsized


def lm_activation_numels(model: Any, tokens: int) -> tuple[dict[str, tuple[int, bool]], list[str]]:
    """{LM hook name: (numel, is_bool)} of a text-only forward of ``tokens`` positions, batch 1, and the
    LM hook names it could not size. ``model`` may (and should) live on the meta device."""
    t = model.cfg.text

    def run() -> None:
        resid = model.hook_embed(model.embed(torch.zeros(1, tokens, dtype=torch.long, device="meta")))
        mask = AttentionMask(causal=t.causal, key_padding=None, k_len=tokens, sliding_window=t.sliding_window,
                             query_positions=torch.arange(tokens, device="meta"))
        rotary = None
        if model.rotary is not None:
            rotary = tuple(torch.empty(1, tokens, 1, t.rotary_dim or t.d_head, device="meta") for _ in range(2))
        for block in model.blocks:
            resid = block(resid, mask, rotary, _meta_cross_state(model, tokens) if block.mixer_kind == "cross_attention"
                          else None)
        model.ln_final(resid)

    seen, unsized = _record(model, is_lm_hook, run)
    return {k: (_numel(shape), is_bool) for k, (shape, is_bool) in seen.items()}, unsized


def _meta_cross_state(model: Any, tokens: int) -> Any:
    """A cross-attention layer's state holding the keys of ONE image on the meta device (every tile of the tower's
    largest tiling, class token included), every text position allowed to see them."""
    from .components.cross_attention import CrossKV

    v = model.cfg.vision
    n_keys = v.extra.get("max_num_tiles", 1) * (v.n_patches + int(v.class_token))
    state = CrossKV()
    state.begin(torch.empty(1, n_keys, model.cfg.d_model, device="meta"), None, tokens)
    return state


def vision_activation_numels(model: Any) -> tuple[dict[str, tuple[int, bool]] | None, str]:
    """{vision / projector hook name: (numel, is_bool)} for ONE image at the tower's image size, or None and why not."""
    v = model.cfg.vision
    size = getattr(v, "image_size", None)
    if not isinstance(size, int):
        return None, "unknown: the vision config has no fixed image size"
    pixels = torch.empty(1, v.n_channels, size, size, device="meta")
    extras: dict = {}
    tiles = v.extra.get("max_num_tiles")
    if tiles:  # a tiled tower (pixel_values [batch, images, tiles, C, H, W]): one image of the largest tiling
        pixels = torch.empty(1, 1, tiles, v.n_channels, size, size, device="meta")
        extras = {"aspect_ratio_ids": torch.tensor([[v.extra["max_aspect_ratio_id"]]]),
                  "aspect_ratio_mask": torch.ones(1, 1, tiles, dtype=torch.long)}
    high = v.extra.get("high_res")
    if high is not None:  # a second tower on its own pixels (DeepSeek-VL-Hybrid): the same image at its resolution
        extras = {"high_res_pixel_values": torch.empty(1, high.n_channels, high.image_size, high.image_size,
                                                       device="meta")}
    embeds: list[torch.Tensor] = []  # hook_image_embeds is the pipeline's output (the forward hooks it before splicing)
    try:
        seen, unsized = _record(model, lambda n: not is_lm_hook(n),
                                lambda: embeds.append(model.encode_images(pixels, extras)[0]))
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, NotImplementedError) as err:
        pipeline = model.cfg.extra.get("image_pipeline", "vit_mlp")
        return None, (f"unknown: the {pipeline!r} image pipeline needs more than a pixel batch to run on the meta "
                      f"device ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
    if "hook_image_embeds" in unsized:
        unsized.remove("hook_image_embeds")
        seen["hook_image_embeds"] = (tuple(embeds[0].shape), False)
    note = (f"one {size}x{size} image" if not tiles else f"one image of {tiles} tiles of {size}x{size}") + \
        ", every vision-tower, projector and hook_image_embeds hook point cached"
    if unsized:
        note += f"; not sized: {', '.join(unsized)}"
    return {k: (_numel(shape), is_bool) for k, (shape, is_bool) in seen.items()}, note


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def numel_bytes(numels: dict[str, tuple[int, bool]], element_size: int) -> int:
    return sum(n * (1 if is_bool else element_size) for n, is_bool in numels.values())


def activation_bytes(model: Any, tokens: int, dtype_bytes: dict[str, int]) -> tuple[dict[str, int], str]:
    """Bytes of a full LM ``run_with_cache`` per dtype, and a sentence saying what was assumed."""
    numels, unsized = lm_activation_numels(model, tokens)
    out = {d: numel_bytes(numels, b) for d, b in dtype_bytes.items()}
    quadratic = sum(n for name, (n, _) in numels.items() if name.endswith(QUADRATIC_PER_HEAD + (QUADRATIC_MASK,)))
    total = sum(n for n, _ in numels.values())
    text = (f"batch 1, {tokens} positions, every language-model hook point cached; hook_attn_scores and "
            f"hook_pattern are [head, pos, pos] and hook_mask [pos, pos] bool per layer: quadratic in tokens, "
            f"{100 * quadratic / max(total, 1):.0f}% of the elements here; the vision side is counted per image below")
    if unsized:
        text += f"; not sized (not fired by a text-only forward): {', '.join(unsized)}"
    return out, text
