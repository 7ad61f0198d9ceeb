"""Sparse autoencoders on VLMs: SAELens SAEs spliced at any hook point, their features drawn on the image.

SAELens stays the SAE library (``pip install hooked_vlm[sae]``); this package never imports it at
import time (``hooked_vlm.model`` imports it, and the pinned stack has no sae-lens). The names below are
imported on first use, so ``hooked_vlm.saes.train_cli`` (the command line's parser) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "SAEFeatureMap": "features", "TopActivations": "features", "feature_acts": "features",
    "sae_feature_map": "features", "top_activating": "features", "load_sae": "load", "require_sae_lens": "load",
    "SAE_HOOKS": "splice", "SAEMixin": "splice", "SAESplice": "splice", "hooks_disabled": "splice",
    "sae_hook_names": "splice",
}

__all__ = [
    "SAEFeatureMap", "TopActivations", "feature_acts", "load_sae", "require_sae_lens", "sae_feature_map", "top_activating",
    "SAE_HOOKS", "SAEMixin", "SAESplice", "hooks_disabled", "sae_hook_names",
]

if TYPE_CHECKING:
    from .features import SAEFeatureMap, TopActivations, feature_acts, sae_feature_map, top_activating
    from .load import load_sae, require_sae_lens
    from .splice import SAE_HOOKS, SAEMixin, SAESplice, hooks_disabled, sae_hook_names


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hooked_vlm.saes' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
