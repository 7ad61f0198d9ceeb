"""DeepStack (Qwen3-VL): features of intermediate ViT layers, each through its own patch merger, are ADDED to the
image positions of the first language-model layers (merger ``i`` feeds the output of LM block ``i``).

:class:`DeepStackMerger` is the projector: the usual :class:`PatchMerger` on the tower's last hidden state
(``projector.ln_q`` / ``linear_1`` / ``linear_2``, hooks ``projector.hook_in`` / ``hook_out``) plus one merger per
DeepStack level (``projector.deepstack.{i}``, each with ``postshuffle_norm``: the norm runs over the concatenated
merge**2 patches). ``extra``: as :class:`PatchMerger`, plus ``n_deepstack`` (how many levels).
The LM adds level ``i`` at ``blocks.{i}.hook_deepstack`` (see HookedVLM.forward).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..config import ProjectorConfig
from .patch_merger import PatchMerger


class DeepStackMerger(PatchMerger):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__(dataclasses.replace(cfg, extra={**cfg.extra, "postshuffle_norm": False}))
        level = dataclasses.replace(cfg, extra={**cfg.extra, "postshuffle_norm": True})
        self.deepstack = nn.ModuleList([PatchMerger(level) for _ in range(cfg.extra["n_deepstack"])])

    def levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Hidden states of the DeepStack ViT layers [1, n_patches, d_vision] each -> [1, n_image_tokens, d_model]."""
        if len(features) != len(self.deepstack):
            raise ValueError(f"{len(features)} DeepStack feature levels for {len(self.deepstack)} mergers")
        return [merger(x) for merger, x in zip(self.deepstack, features)]
