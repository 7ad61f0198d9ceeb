"""Per-layer inputs (Gemma 4's per-layer embeddings, PLE; ``TowerConfig.d_per_layer_input`` > 0).

Every LM layer gets its own small input vector per position, made once before the first block from two parts:

- the token part: a table [per_layer_vocab, n_layers * d_per_layer_input] looked up by token id (positions of image
  placeholders look up the pad token, as HF does), times sqrt(d_per_layer_input);
- the context part: the input embeddings (after image splicing, what ``hook_embed`` shows) projected to
  n_layers * d_per_layer_input, times d_model ** -0.5, then an RMS norm over each layer's d_per_layer_input;

combined as (context + token) * 2 ** -0.5 and shown at ``hook_per_layer_inputs`` [batch, pos, layer,
d_per_layer_input]. Block l reads slice l (its ``hook_per_layer_input``) and adds, after its MLP,
``ln_ple(ple_proj(act(ple_gate(resid)) * per_layer_input))`` (components/block.py).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..config import TowerConfig
from ..hook_points import HookPoint
from .norms import make_norm


class PerLayerInputs(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.n_layers, self.d = cfg.n_layers, cfg.d_per_layer_input
        self.embed = nn.Parameter(torch.zeros(cfg.per_layer_vocab, cfg.n_layers * self.d))  # token table
        self.proj = nn.Linear(cfg.d_model, cfg.n_layers * self.d, bias=False)  # weight [(layer d), d_model]
        self.norm = make_norm(cfg.normalization_type, self.d, cfg.norm_eps, cfg.norm_offset)
        self.token_scale = self.d**0.5
        self.context_scale = cfg.d_model**-0.5
        self.hook_token_part = HookPoint()  # [batch, pos, layer, d_per_layer_input]
        self.hook_context_part = HookPoint()  # [batch, pos, layer, d_per_layer_input]
        self.hook_per_layer_inputs = HookPoint()  # [batch, pos, layer, d_per_layer_input]

    def forward(self, tokens: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """tokens [batch, pos] (image placeholders already replaced by the pad id), embeds [batch, pos, d_model]."""
        if bool(((tokens < 0) | (tokens >= self.embed.shape[0])).any()) and not tokens.is_meta:
            raise ValueError(f"token ids must be in [0, {self.embed.shape[0]}) for the per-layer embedding table")
        table = nn.functional.embedding(tokens, self.embed)
        scale = torch.tensor(self.token_scale, dtype=torch.float32, device=table.device).to(table.dtype)
        token = self.hook_token_part(rearrange(table * scale, "b p (l d) -> b p l d", l=self.n_layers))
        context = rearrange(self.proj(embeds) * self.context_scale, "b p (l d) -> b p l d", l=self.n_layers)
        context = self.hook_context_part(self.norm(context))
        return self.hook_per_layer_inputs((context + token) * 2**-0.5)
