"""Hook names: TransformerLens 3's ``get_act_name`` shorthand, and filters telling LM hooks from image-path hooks.

TransformerLens 4 removed ``transformer_lens.utils``; ``hooked_vlm.get_act_name`` keeps TL 3's semantics::

    get_act_name("resid_post", 3)                 -> "blocks.3.hook_resid_post"
    get_act_name("k6")                            -> "blocks.6.attn.hook_k"
    get_act_name("scale4ln1")                     -> "blocks.4.ln1.hook_scale"
    get_act_name("normalized")                    -> "ln_final.hook_normalized"
    get_act_name("pattern", 0, vision=True)       -> "vision.blocks.0.attn.hook_pattern"

Name filters (``run_with_cache(names_filter=...)``, ``model.hooks(...)`` with a filter, ``hook_dict`` scans):

* :func:`lm_hooks` -- the language model's hooks, whose positions are the merged sequence (text + image
  tokens): ``hook_embed``, ``blocks.*``, ``ln_final.*``;
* :func:`vision_hooks` -- everything that runs on the images before they are spliced into that sequence: the
  vision tower (``vision.*``), the projector (``projector.*``) and ``hook_image_embeds``.

The two split ``model.hook_dict`` in two. Combine them with other tests in a lambda, e.g.
``names_filter=lambda n: lm_hooks(n) and n.endswith("hook_resid_post")``.
"""

from __future__ import annotations

import re

#: hook names under these prefixes (or equal to IMAGE_PATH_NAMES) run on the images, before splicing
IMAGE_PATH_PREFIXES = ("vision.", "projector.")
IMAGE_PATH_NAMES = ("hook_image_embeds",)

_LAYER_TYPES = {"a": "attn", "attention": "attn", "m": "mlp", "b": "", "block": "", "blocks": ""}
_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
            "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_ATTN = ("k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores", "mask")
_MLP = ("pre", "post", "mid", "pre_linear")
_NORM = ("scale", "normalized")


def get_act_name(name: str, layer: int | str | None = None, layer_type: str | None = None, vision: bool = False) -> str:
    """A hook name from TransformerLens 3's shorthand (``transformer_lens.utils.get_act_name``).

    ``name`` is an activation ("resid_pre", "k", "pattern", "scale", ...) or a compact form whose first digits are
    the layer and whose tail is the layer type ("k6", "scale4ln1"); a full name ("blocks.0.hook_z") is returned as
    it is. ``layer_type`` tells the block's sub-module ("attn" / "a", "mlp" / "m", "ln1", "ln2"). ``vision=True``
    names the vision tower's hook (the same names under ``vision.``). Names that no model has are not checked here:
    ``run_with_cache`` / ``add_hook`` raise with the nearest real names."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        full = name
    else:
        compact = re.fullmatch(r"([a-z_]+?)(\d+)([a-z]\w*)?", name)
        if compact is not None:
            if layer is not None:
                raise ValueError(f"{name!r} already holds a layer ({compact.group(2)}); do not pass layer={layer!r} too")
            name, layer, layer_type = compact.group(1), int(compact.group(2)), compact.group(3) or layer_type
        name = _ALIASES.get(name, name)
        if name in _ATTN:
            layer_type = "attn"
        elif name in _MLP:
            layer_type = "mlp"
        elif layer_type is not None:
            layer_type = _LAYER_TYPES.get(layer_type, layer_type)
        full = f"blocks.{int(layer)}." if layer is not None else ""
        full += f"{layer_type}.hook_{name}" if layer_type else f"hook_{name}"
        if name in _NORM and layer is None:
            full = f"ln_final.{full}"
    if vision and not full.startswith("vision."):
        full = f"vision.{full}"
    return full


def vision_hooks(name: str) -> bool:
    """True for hooks on the image path: the vision tower, the projector and ``hook_image_embeds``."""
    return name.startswith(IMAGE_PATH_PREFIXES) or name in IMAGE_PATH_NAMES


def lm_hooks(name: str) -> bool:
    """True for the language model's hooks (positions = the merged text + image sequence)."""
    return not vision_hooks(name)
