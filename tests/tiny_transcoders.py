"""Tiny random transcoder sets for a model's language-model layers (no sae-lens needed), and one SAELens-like
transcoder object for the splice (``model.add_sae``).

The weights are random, so the transcoders reconstruct the MLPs badly: the error nodes carry the rest, which is
what the exactness tests need (the replacement with errors must still equal the model).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from hooked_vlm.analysis.graph import TranscoderSet


def random_set(model: Any, d_sae: int = 24, seed: int = 0, skip: bool = False, jumprelu: bool = False,
               cross_layer: bool = False, input_hook: str = "blocks.{layer}.ln2.hook_normalized",
               output_hook: str = "blocks.{layer}.hook_mlp_out", b_dec: bool = True, out_scale: float = 0.05
               ) -> TranscoderSet:
    """One random transcoder per layer of ``model`` (fp32); about half the features fire on unit-scale inputs.

    Outputs are ~``out_scale`` per entry, the size of a tiny random model's residual stream (HF's init std 0.02):
    much larger outputs would make the error nodes cancel them, and the float32 rounding of that cancellation,
    divided by the frozen norm scales (~0.02), would swamp the exactness tests."""
    g = torch.Generator().manual_seed(seed)
    d, n = model.cfg.d_model, model.cfg.n_layers
    rnd = lambda *s, scale=1.0: torch.randn(*s, generator=g) * scale  # noqa: E731
    W_dec = {}
    for l in range(n):
        for l2 in (range(l, n) if cross_layer else [l]):
            W_dec[(l, l2)] = rnd(d_sae, d, scale=out_scale * d_sae ** -0.5 / (1 + l2 - l))
    return TranscoderSet(
        W_enc=[rnd(d, d_sae, scale=d ** -0.5) for _ in range(n)],
        b_enc=[rnd(d_sae, scale=0.1) for _ in range(n)],
        W_dec=W_dec,
        b_dec=[rnd(d, scale=0.2 * out_scale if b_dec else 0.0) for _ in range(n)],
        input_hooks=[input_hook.format(layer=l) for l in range(n)],
        output_hooks=[output_hook.format(layer=l) for l in range(n)],
        threshold=[rnd(d_sae).abs() * 0.2 for _ in range(n)] if jumprelu else None,
        W_skip=[rnd(d, d, scale=out_scale * d ** -0.5) for _ in range(n)] if skip else None,
    )


class TinyTranscoder(HookedRootModule):
    """A (skip) transcoder with SAELens's interface, built from one layer of a :class:`TranscoderSet`."""

    def __init__(self, ts: TranscoderSet, layer: int):
        super().__init__()
        d_in, d_sae = ts.W_enc[layer].shape
        self.cfg = SimpleNamespace(d_in=d_in, d_sae=d_sae, d_out=ts.b_dec[layer].shape[0], reshape_activations="none",
                                   normalize_activations="none", architecture=lambda: "skip_transcoder",
                                   metadata=SimpleNamespace(hook_name=ts.input_hooks[layer],
                                                            hook_name_out=ts.output_hooks[layer]))
        self.W_enc = nn.Parameter(ts.W_enc[layer].clone())
        self.b_enc = nn.Parameter(ts.b_enc[layer].clone())
        self.W_dec = nn.Parameter(ts.W_dec[(layer, layer)].clone())
        self.b_dec = nn.Parameter(ts.b_dec[layer].clone())
        self.W_skip = nn.Parameter(ts.W_skip[layer].clone() if ts.W_skip[layer] is not None
                                   else torch.zeros(d_in, d_in))
        self.use_error_term = False
        for name in ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error",
                     "hook_sae_output"):
            setattr(self, name, HookPoint())
        self.setup()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self.hook_sae_input(x)
        return self.hook_sae_acts_post(torch.relu(self.hook_sae_acts_pre(x @ self.W_enc + self.b_enc)))

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return self.hook_sae_recons(acts @ self.W_dec + self.b_dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)) + x @ self.W_skip.T
