"""hooked_vlm: TransformerLens-style hooks, token spans and analyses for vision-language models."""

from .config import HookedVLMConfig, ProjectorConfig, TokenRoles, TowerConfig, VisionConfig
from .hook_names import get_act_name, lm_hooks, vision_hooks
from .hook_points import HookPoint
from .inspect import CheckpointReport, inspect_checkpoint
from .model import HookedVLM, KVCache
from .spans import ImageLayout, TokenSpans

__all__ = ["HookedVLM", "HookedVLMConfig", "TowerConfig", "VisionConfig", "ProjectorConfig", "TokenRoles",
           "HookPoint", "KVCache", "inspect_checkpoint", "CheckpointReport", "TokenSpans", "ImageLayout",
           "get_act_name", "lm_hooks", "vision_hooks"]
__version__ = "0.1.0"
