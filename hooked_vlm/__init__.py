"""hooked_vlm: TransformerLens-style hooks, token spans and analyses for vision-language models.

The public names below are imported on first use (PEP 562 ``__getattr__``): ``import hooked_vlm`` (and the
``hooked-vlm --help`` / ``--version`` command) loads neither torch nor transformer_lens; ``from hooked_vlm import
HookedVLM`` loads what the model needs. ``benchmarks/bench_startup.py`` measures it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the submodule that defines it
_LAZY = {
    "HookedVLMConfig": "config", "ProjectorConfig": "config", "TokenRoles": "config", "TowerConfig": "config",
    "VisionConfig": "config", "HookPoint": "hook_points", "CheckpointReport": "inspect",
    "inspect_checkpoint": "inspect", "HookedVLM": "model", "KVCache": "kv_cache", "ImageLayout": "spans",
    "TokenSpans": "spans", "get_act_name": "hook_names", "lm_hooks": "hook_names", "vision_hooks": "hook_names",
}

__all__ = ["HookedVLM", "HookedVLMConfig", "TowerConfig", "VisionConfig", "ProjectorConfig", "TokenRoles",
           "HookPoint", "KVCache", "inspect_checkpoint", "CheckpointReport", "TokenSpans", "ImageLayout",
           "get_act_name", "lm_hooks", "vision_hooks"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from .config import HookedVLMConfig, ProjectorConfig, TokenRoles, TowerConfig, VisionConfig
    from .hook_points import HookPoint
    from .inspect import CheckpointReport, inspect_checkpoint
    from .kv_cache import KVCache
    from .model import HookedVLM
    from .spans import ImageLayout, TokenSpans
    from .hook_names import get_act_name, lm_hooks, vision_hooks


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hooked_vlm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
