"""Sparse mixture-of-experts feed-forward (``TowerConfig.mlp_kind="moe"``; Qwen3-MoE-style top-k routing by default,
GLM-4.5's bias-corrected grouped sigmoid router with ``moe_router="sigmoid_grouped"``: components/moe_router.py).

A linear router gives each token ``n_experts`` logits; softmax (float32) -> the ``n_experts_per_tok`` largest
probabilities (``torch.topk``, so ties break as in HF) -> renormalised to sum to 1 -> cast back. Each chosen expert is
a gated MLP ``down(act(gate(x)) * up(x))``; the block output is the weighted sum of the chosen experts' outputs.
Expert weights are stored fused as in the checkpoints: ``gate_up_proj`` [expert, 2 * d_mlp, d_model] (gate rows
first) and ``down_proj`` [expert, d_model, d_mlp].

Hooks: ``hook_router_logits`` [batch, pos, n_experts]; ``hook_expert_indices`` [batch, pos, k] (the chosen experts,
in top-k order, long); ``hook_expert_weights`` [batch, pos, k] (their normalised weights: zero one to drop that
expert for that token); ``hook_expert_out`` [batch, pos, k, d_model] (each chosen expert's output, before weighting).

``cfg.moe_router="sigmoid_topk_input"`` (Llama 4, HF Llama4Router / Llama4TextMoe): the top-k LOGITS are chosen, their
sigmoids are the weights (no renormalisation), and each weight multiplies the chosen expert's INPUT:
expert_e(w * x); the routed output is the plain sum of ``hook_expert_out`` (which then already includes the weights).

Shared expert (``cfg.d_mlp_shared_expert``; Qwen3.5-MoE, Qwen2-MoE, GLM / DeepSeek): a gated MLP every token takes,
``shared_expert`` (its own hook_pre / hook_post), added to the routed sum. With ``cfg.shared_expert_gate`` its output
is scaled by ``sigmoid(shared_expert_gate(x))`` (one scalar per token, ``hook_shared_gate`` [batch, pos, 1], after the
sigmoid: 0 switches the shared expert off for that token); ``hook_shared_out`` [batch, pos, d_model] is what is added.

Gemma 4 (``cfg.router_norm_scale``): the router reads ``rms(x) * router_scale * d_model ** -0.5`` (a weightless RMS
norm, ``router_norm``), and the renormalised top-k weights are multiplied by ``per_expert_scale[expert]``
(``hook_expert_weights`` shows the product, what multiplies each expert's output). ``forward(x, route_from=r)`` routes
from ``r`` instead of ``x`` (Gemma 4 routes from the residual and feeds the experts its normed copy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from ..config import TowerConfig
from ..hook_points import HookPoint
from .mlp import MLP
from .norms import UnitRMSNorm
from .moe_router import sigmoid_grouped_topk


class MoEMLP(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        e, d, dm = cfg.n_experts, cfg.d_model, cfg.d_mlp_expert
        self.n_experts, self.top_k, self.d_mlp = e, cfg.n_experts_per_tok, dm
        self.router = nn.Linear(d, e, bias=False)  # weight [expert, d_model]
        self.router_kind = cfg.moe_router
        if cfg.moe_router == "sigmoid_grouped":  # components/moe_router.py: the choice bias (load balancing)
            self.e_score_correction_bias = nn.Parameter(torch.zeros(e))  # [expert]
            self._group = (cfg.moe_n_group, cfg.moe_topk_group, cfg.moe_norm_topk_prob, cfg.moe_routed_scaling)
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * dm, d))
        self.down_proj = nn.Parameter(torch.empty(e, d, dm))
        self.act = ACT2FN[cfg.act_fn]
        self.router_norm = None
        if cfg.router_norm_scale:
            self.router_norm = UnitRMSNorm(cfg.norm_eps)
            self.router_scale = nn.Parameter(torch.ones(d))  # [d_model]
            self.per_expert_scale = nn.Parameter(torch.ones(e))  # [n_experts]
            self.router_input_scale = d**-0.5
        self.input_weighted = cfg.moe_router == "sigmoid_topk_input"  # Llama 4: weights scale the expert INPUT
        self.hook_router_logits = HookPoint()  # [batch, pos, n_experts]
        self.hook_expert_indices = HookPoint()  # [batch, pos, k]
        self.hook_expert_weights = HookPoint()  # [batch, pos, k]
        self.hook_expert_out = HookPoint()  # [batch, pos, k, d_model]
        self.shared_expert = self.shared_expert_gate = None
        if cfg.d_mlp_shared_expert is not None:
            self.shared_expert = MLP(d, cfg.d_mlp_shared_expert, cfg.act_fn, gated=True, bias=False)
            self.hook_shared_out = HookPoint()  # [batch, pos, d_model]
            if cfg.shared_expert_gate:
                self.shared_expert_gate = nn.Linear(d, 1, bias=False)  # weight [1, d_model]
                self.hook_shared_gate = HookPoint()  # [batch, pos, 1]

    @property
    def b_out(self) -> torch.Tensor:
        return torch.zeros(self.down_proj.shape[1], device=self.down_proj.device, dtype=self.down_proj.dtype)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [batch, pos, d_model] -> (expert indices [batch, pos, k], weights [batch, pos, k]), as HF's top-k router."""
        if self.router_kind == "sigmoid_grouped":  # float32 logits, as HF's sigmoid routers
            logits = self.hook_router_logits(F.linear(x.float(), self.router.weight.float()))
            n_group, topk_group, norm, scale = self._group
            indices, top = sigmoid_grouped_topk(logits, self.e_score_correction_bias, self.top_k, n_group, topk_group,
                                                norm, scale)
            return self.hook_expert_indices(indices), self.hook_expert_weights(top.to(x.dtype))
        if self.router_norm is not None:
            x = self.router_norm(x) * self.router_scale * self.router_input_scale
        logits = self.hook_router_logits(self.router(x))
        if self.input_weighted:  # Llama 4: top-k of the logits, sigmoid of each (float32, cast back)
            top, indices = torch.topk(logits, self.top_k, dim=-1)
            return self.hook_expert_indices(indices), self.hook_expert_weights(torch.sigmoid(top.float()).to(logits.dtype))
        probs = torch.softmax(logits, dim=-1, dtype=torch.float)
        top, indices = torch.topk(probs, self.top_k, dim=-1)
        top = top / top.sum(dim=-1, keepdim=True)
        if self.router_norm is not None:
            top = top * self.per_expert_scale[indices]
        return self.hook_expert_indices(indices), self.hook_expert_weights(top.to(logits.dtype))

    def forward(self, x: torch.Tensor, route_from: torch.Tensor | None = None) -> torch.Tensor:
        indices, weights = self.route(x if route_from is None else route_from)
        b, p, d = x.shape
        flat, flat_idx = x.reshape(-1, d), indices.reshape(-1, self.top_k)
        out = flat.new_zeros(flat.shape[0], self.top_k, d)
        if flat.is_meta:  # shapes only (hooked_vlm.memory sizes the hooks on the meta device): no routing to run
            return self._combine(x, out.view(b, p, self.top_k, d), weights)
        if bool(((flat_idx < 0) | (flat_idx >= self.n_experts)).any()):
            raise ValueError(f"hook_expert_indices must hold expert ids in [0, {self.n_experts})")
        flat_w = weights.reshape(-1, self.top_k)
        for e in flat_idx.unique().tolist():
            tok, slot = torch.where(flat_idx == e)
            inp = flat[tok] * flat_w[tok, slot, None].to(flat.dtype) if self.input_weighted else flat[tok]
            gate, up = F.linear(inp, self.gate_up_proj[e]).chunk(2, dim=-1)
            out[tok, slot] = F.linear(self.act(gate) * up, self.down_proj[e])
        return self._combine(x, out.view(b, p, self.top_k, d), weights)

    def _combine(self, x: torch.Tensor, out: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The chosen experts' outputs [batch, pos, k, d_model] weighted and summed, plus the shared expert."""
        out = self.hook_expert_out(out)
        routed = out.sum(-2) if self.input_weighted else (out * weights[..., None].to(out.dtype)).sum(-2)
        if self.shared_expert is None:
            return routed
        shared = self.shared_expert(x)
        if self.shared_expert_gate is not None:
            shared = self.hook_shared_gate(torch.sigmoid(self.shared_expert_gate(x))) * shared
        return routed + self.hook_shared_out(shared)


def build_mlp(cfg: TowerConfig, layer: int) -> nn.Module:
    """The feed-forward of block ``layer``: MoE where ``cfg.mlp_kind == "moe"`` and the layer is in ``cfg.moe_layers``
    (None = every layer), else the dense gated / plain MLP."""
    if cfg.mlp_kind == "moe" and not cfg.moe_beside_dense and (cfg.moe_layers is None or layer in cfg.moe_layers):
        return MoEMLP(cfg)
    width = cfg.d_mlp * (cfg.kv_shared_mlp_factor if cfg.kv_source(layer) is not None else 1)  # Gemma 4 double-wide
    return MLP(cfg.d_model, width, cfg.act_fn, cfg.gated_mlp, cfg.mlp_bias, fused_gate_up=cfg.fused_gate_up)
