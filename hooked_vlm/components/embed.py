"""Token embedding and unembedding."""

from __future__ import annotations

import torch
from torch import nn


class Embed(nn.Module):
    def __init__(self, d_vocab: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d_vocab, d_model))  # W_E [d_vocab, d_model]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(tokens, self.weight)


class Unembed(nn.Module):
    def __init__(self, d_model: int, d_vocab: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d_vocab, d_model))  # stored [d_vocab, d_model]; W_U is its transpose

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight)
