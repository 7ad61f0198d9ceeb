"""Router variants of the MoE feed-forward (``TowerConfig.moe_router``); components/moe.py calls them.

``"softmax_topk"`` (Qwen3-MoE style, in moe.py): softmax over the experts, top-k, renormalised.
``"sigmoid_grouped"`` (GLM-4.5 / DeepSeek-V3 style, :func:`sigmoid_grouped_topk`): each expert's score is
``sigmoid(logit)``; the CHOICE uses ``score + e_score_correction_bias`` (a per-expert bias trained for load balance);
the experts are split into ``moe_n_group`` groups, each group scored by the sum of its two best biased scores, and
only the ``moe_topk_group`` best groups compete; the top-k biased scores pick the experts; the WEIGHTS are the
unbiased sigmoid scores of those experts, renormalised to sum to 1 when ``moe_norm_topk_prob``, times
``moe_routed_scaling``. Everything in float32, as HF.
"""

from __future__ import annotations

import torch

from ..config import MOE_ROUTERS  # noqa: F401  (the router kinds; re-exported)


def sigmoid_grouped_topk(logits: torch.Tensor, bias: torch.Tensor, top_k: int, n_group: int, topk_group: int,
                         norm_topk_prob: bool, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [..., n_experts] (float32), bias [n_experts] -> (indices [..., k] long, weights [..., k] float32)."""
    n_experts = logits.shape[-1]
    scores = logits.float().sigmoid()
    choice = scores + bias.float()
    grouped = choice.unflatten(-1, (n_group, n_experts // n_group))  # [..., group, expert in group]
    group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)  # [..., group]
    best_groups = group_scores.topk(topk_group, dim=-1).indices
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter(-1, best_groups, True)
    choice = grouped.masked_fill(~keep[..., None], float("-inf")).flatten(-2)
    indices = choice.topk(top_k, dim=-1).indices
    weights = scores.gather(-1, indices)
    if norm_topk_prob:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return indices, weights * scaling
