"""A tiny SAE following SAELens's interface (no sae-lens needed) and the exact-inverse weights.

``exact_weights(d)`` gives encoder [Q, -Q] and decoder [Q^T; -Q^T] for a random orthogonal Q:
ReLU(xQ) - ReLU(-xQ) = xQ, so decode(encode(x)) = x up to float rounding, for ReLU, top-k with
k = d_sae, JumpReLU with threshold 0 and gated SAEs with r_mag = 0 alike.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule


def exact_weights(d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_enc [d, 2d], W_dec [2d, d]) with W_dec exactly undoing ReLU(x @ W_enc)."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
    return torch.cat([q, -q], 1), torch.cat([q.T, -q.T], 0)


class TinySAE(HookedRootModule):
    """ReLU SAE with SAELens's methods and hook points; ``lossy=True`` perturbs the decoder."""

    def __init__(self, d_in: int, hook_name: str, seed: int = 0, lossy: bool = False):
        super().__init__()
        self.cfg = SimpleNamespace(d_in=d_in, d_sae=2 * d_in, reshape_activations="none",
                                   metadata=SimpleNamespace(hook_name=hook_name, hook_name_out=None))
        w_enc, w_dec = exact_weights(d_in, seed)
        if lossy:
            w_dec = w_dec + 0.3 * torch.randn(w_dec.shape, generator=torch.Generator().manual_seed(seed + 1))
        self.W_enc, self.W_dec = nn.Parameter(w_enc), nn.Parameter(w_dec)
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.use_error_term = False
        for name in ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error",
                     "hook_sae_output"):
            setattr(self, name, HookPoint())
        self.setup()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_sae_input(x)
        return self.hook_sae_acts_post(torch.relu(self.hook_sae_acts_pre(x @ self.W_enc)))

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return self.hook_sae_recons(acts @ self.W_dec + self.b_dec)
