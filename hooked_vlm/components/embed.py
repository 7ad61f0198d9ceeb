"""Token embedding and unembedding."""

from __future__ import annotations

import torch
from torch import nn


class Embed(nn.Module):
    """``scale`` (Gemma: sqrt(d_model)) multiplies the looked-up rows; it is rounded to float32, then to the
    weight's dtype, as HF's Gemma3TextScaledWordEmbedding does. ``W_E`` stays the unscaled table."""

    def __init__(self, d_vocab: int, d_model: int, scale: float | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d_vocab, d_model))  # W_E [d_vocab, d_model]
        self.scale = scale

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = nn.functional.embedding(tokens, self.weight)
        if self.scale is None:
            return out
        return out * torch.tensor(self.scale, dtype=torch.float32, device=out.device).to(self.weight.dtype)


class Unembed(nn.Module):
    """logits = (x @ weight.T) * ``scale`` (Cohere2ForCausalLM's logit_scale; 1.0 = none). The scale lives here, where
    logits are computed, so everything that unembeds through this module (forward, the logit lens) includes it;
    ``HookedVLM.W_U`` includes it too (logits = ln_final(resid) @ W_U, TransformerLens's convention)."""

    def __init__(self, d_model: int, d_vocab: int, scale: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d_vocab, d_model))  # stored [d_vocab, d_model]; W_U is its transpose
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = nn.functional.linear(x, self.weight)
        return logits if self.scale == 1.0 else logits * self.scale
