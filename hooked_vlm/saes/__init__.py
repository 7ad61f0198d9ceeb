"""Sparse autoencoders on VLMs: SAELens SAEs spliced at any hook point, their features drawn on the image.

SAELens stays the SAE library (``pip install hooked_vlm[sae]``); this package never imports it at
import time (``hooked_vlm.model`` imports it, and the pinned stack has no sae-lens).
"""

# splicing and features (saes-core)
from .features import SAEFeatureMap, TopActivations, feature_acts, sae_feature_map, top_activating
from .load import load_sae, require_sae_lens
from .splice import SAE_HOOKS, SAEMixin, SAESplice, hooks_disabled, sae_hook_names

__all__ = [
    "SAEFeatureMap", "TopActivations", "feature_acts", "load_sae", "require_sae_lens", "sae_feature_map", "top_activating",
    "SAE_HOOKS", "SAEMixin", "SAESplice", "hooks_disabled", "sae_hook_names",
]
