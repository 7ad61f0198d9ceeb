"""A transformer block, readable top to bottom (used by the LM and the vision tower): pre-norm, Swin-style
post-sublayer norm, or Gemma's sandwich (``cfg.norm_placement``); pre-norm blocks may scale their sublayer outputs
by learned gains ``ls1`` / ``ls2`` (``cfg.layer_scale``, InternViT).

The token mixer comes from the layer's ``layer_types`` entry through ``components/mixers.py`` MIXERS and sits under
that kind's attribute name (``attn`` for attention, ``linear_attn`` for Gated DeltaNet, ...); ``block.mixer`` is it
whatever its name, ``block.mixer_kind`` the entry. ``hook_attn_out`` is the mixer's output whatever the kind.

Tanh-gated layers (``cfg.tanh_gated_layers``; Mllama's cross-attention layers and global vision encoder): the mixer
and MLP outputs are multiplied by tanh of learned scalars ``attn_gate`` / ``mlp_gate`` before they are added
(``hook_attn_gate`` / ``hook_mlp_gate`` show the tanh values). A cross-attention block with no image keys in its
state passes the residual through unchanged (HF skips the layer: text-only forwards); where the mixer reports text
rows that see no image (``state.row_has_image``), their MLP output is zeroed (HF's full-text-row mask).

Parallel blocks (``cfg.parallel_block``, Cohere / Command R): one norm ``ln1`` feeds the mixer AND the MLP, and
``resid_post = resid_pre + attn_out + mlp_out``. Such a block has no ``ln2`` and no ``hook_resid_mid`` (no residual
exists between the sublayers, and a hook that never fires is not created); ``blocks.{l}.ln1.hook_normalized`` is the
input of both sublayers (analyses' "mlp_in" is ln1's output there).

Gemma 4 (docs/architecture.md section 4): per-layer inputs (``cfg.d_per_layer_input``): after the MLP the block adds
``hook_ple_out = ln_ple(ple_proj(act(ple_gate(resid)) * hook_per_layer_input))``; ``cfg.layer_scalar``: the residual
is then multiplied by the stored scalar ``layer_scalar`` (both before ``hook_resid_post``); ``cfg.moe_beside_dense``:
routed experts ``moe`` (router hooks at ``blocks.{l}.moe.*``) run beside the dense ``mlp``, each output normed
(``ln_mlp_post``, ``ln_moe_post``; the experts read ``ln_moe(resid)`` and are routed from ``resid``), and
``hook_mlp_out`` is ``ln2_post`` of their sum."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import TowerConfig
from ..hook_points import HookPoint
from .masks import AttentionMask
from .mixers import layer_kind, mixer_kind
from transformers.activations import ACT2FN

from .moe import MoEMLP, build_mlp
from .norms import make_norm


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TowerConfig, layer: int = 0):
        super().__init__()
        norm = lambda: make_norm(cfg.normalization_type, cfg.d_model, cfg.norm_eps, cfg.norm_offset,  # noqa: E731
                                 bias=cfg.norm_bias)
        self.ln1 = norm()
        self.mixer_kind = layer_kind(cfg, layer)
        spec = mixer_kind(self.mixer_kind)
        self._mixer_attr = spec.attr
        setattr(self, spec.attr, spec.build(cfg, layer))  # blocks.{l}.attn / .linear_attn / ...
        self.parallel = cfg.parallel_block
        self.ln2 = None if self.parallel else norm()
        self.mlp = build_mlp(cfg, layer)  # dense MLP unless cfg.mlp_kind == "moe" (components/moe.py)
        self.moe = None
        if cfg.moe_beside_dense and (cfg.moe_layers is None or layer in cfg.moe_layers):  # Gemma 4: experts beside it
            self.moe = MoEMLP(cfg)
            self.ln_mlp_post, self.ln_moe, self.ln_moe_post = norm(), norm(), norm()
        self.post_sublayer_norm = cfg.norm_placement == "post_sublayer"
        if cfg.norm_placement == "sandwich":  # Gemma: the sublayer outputs are normed too (TL's ln1_post / ln2_post)
            self.ln1_post, self.ln2_post = norm(), norm()
        else:
            self.ln1_post = self.ln2_post = None
        # layer scale (InternViT): per-channel gains on the sublayer outputs, before they are added (and hooked)
        self.ls1 = nn.Parameter(torch.ones(cfg.d_model)) if cfg.layer_scale else None
        self.ls2 = nn.Parameter(torch.ones(cfg.d_model)) if cfg.layer_scale else None
        self.gated = layer in cfg.tanh_gated_layers
        if self.gated:  # scalar gates; what is added is tanh(gate) * output
            self.attn_gate = nn.Parameter(torch.zeros(1))
            self.mlp_gate = nn.Parameter(torch.zeros(1))
            self.hook_attn_gate = HookPoint()  # [1]  tanh(attn_gate)
            self.hook_mlp_gate = HookPoint()  # [1]  tanh(mlp_gate)
        self.residual_multiplier = cfg.residual_multiplier  # Granite: a scalar on the sublayer outputs (1.0: none)
        self.ple = cfg.d_per_layer_input > 0
        if self.ple:  # Gemma 4 per-layer inputs (components/per_layer_inputs.py makes them)
            self.ple_gate = nn.Linear(cfg.d_model, cfg.d_per_layer_input, bias=False)  # weight [d_ple, d_model]
            self.ple_proj = nn.Linear(cfg.d_per_layer_input, cfg.d_model, bias=False)  # weight [d_model, d_ple]
            self.ln_ple = norm()
            self.ple_act = ACT2FN[cfg.act_fn]
            self.hook_per_layer_input = HookPoint()  # [batch, pos, d_per_layer_input]
            self.hook_ple_out = HookPoint()  # [batch, pos, d_model]  what the per-layer input adds
        # [1], multiplies the output; a stored buffer as in HF (loaded from the checkpoint, not a trained parameter)
        self.register_buffer("layer_scalar", torch.ones(1) if cfg.layer_scalar else None)

        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        if not self.parallel:
            self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(
        self,
        resid: torch.Tensor,  # [batch, pos, d_model]
        mask: AttentionMask,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: Any = None,  # this layer's state in the KVCache (components/mixers.py: MIXERS[kind].state)
        per_layer_input: torch.Tensor | None = None,  # [batch, pos, d_per_layer_input] (Gemma 4 PLE)
    ) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        if self.mixer_kind == "cross_attention" and (kv_cache is None or not kv_cache.has_keys):
            return self.hook_resid_post(resid)  # no images in this forward nor in the cache: HF skips the layer
        if self.gated:
            return self._gated_forward(resid, mask, rotary, kv_cache)
        if self.parallel:  # one norm, both sublayers read it, both outputs added at once
            x = self.ln1(resid)
            attn_out = self.hook_attn_out(self.mixer(x, mask, rotary, kv_cache))
            return self._finish(resid + attn_out + self.hook_mlp_out(self.mlp(x)), per_layer_input)
        if self.post_sublayer_norm:  # Swin-style: the sublayer's OUTPUT is normed (hook_attn_out/mlp_out after it)
            attn_out = self.hook_attn_out(self.ln1(self.mixer(resid, mask, rotary, kv_cache)))
            resid = self.hook_resid_mid(resid + attn_out)
            return self._finish(resid + self.hook_mlp_out(self.ln2(self.mlp(resid))), per_layer_input)
        if self.ln1_post is not None:  # sandwich: hook_attn_out / hook_mlp_out are what is added (after ln*_post)
            attn_out = self.hook_attn_out(self.ln1_post(self.mixer(self.ln1(resid), mask, rotary, kv_cache)))
            resid = self.hook_resid_mid(resid + attn_out)
            return self._finish(resid + self.hook_mlp_out(self.ln2_post(self._feed_forward(resid))), per_layer_input)
        attn_out = self.hook_attn_out(self._scaled(self.mixer(self.ln1(resid), mask, rotary, kv_cache), self.ls1))
        resid = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(self._scaled(self.mlp(self.ln2(resid)), self.ls2))
        return self._finish(resid + mlp_out, per_layer_input)

    def _feed_forward(self, resid: torch.Tensor) -> torch.Tensor:
        """The sandwich block's feed-forward before ln2_post: the MLP of ln2(resid), plus the experts beside it."""
        out = self.mlp(self.ln2(resid))
        if self.moe is None:
            return out
        return self.ln_mlp_post(out) + self.ln_moe_post(self.moe(self.ln_moe(resid), route_from=resid))

    def _finish(self, resid: torch.Tensor, per_layer_input: torch.Tensor | None) -> torch.Tensor:
        """The per-layer input and the layer scalar (Gemma 4; neither: nothing), then hook_resid_post."""
        if self.ple:
            if per_layer_input is None:
                raise ValueError("this block adds a per-layer input (cfg.d_per_layer_input) but none was given")
            gated = self.ple_act(self.ple_gate(resid)) * self.hook_per_layer_input(per_layer_input)
            resid = resid + self.hook_ple_out(self.ln_ple(self.ple_proj(gated)))
        if self.layer_scalar is not None:
            resid = resid * self.layer_scalar
        return self.hook_resid_post(resid)

    def _gated_forward(self, resid, mask, rotary, kv_cache) -> torch.Tensor:
        attn_gate = self.hook_attn_gate(self.attn_gate.tanh())
        attn_out = self.hook_attn_out(attn_gate * self.mixer(self.ln1(resid), mask, rotary, kv_cache))
        resid = self.hook_resid_mid(resid + attn_out)
        mlp = self.mlp(self.ln2(resid))
        rows = getattr(kv_cache, "row_has_image", None)  # [batch, pos]: text rows that see some image key
        if rows is not None:
            mlp = mlp * rows[..., None].to(mlp.dtype)
        mlp_out = self.hook_mlp_out(self.hook_mlp_gate(self.mlp_gate.tanh()) * mlp)
        return self.hook_resid_post(resid + mlp_out)

    @property
    def mixer(self) -> nn.Module:
        """The token mixer, whatever its kind's attribute name."""
        return getattr(self, self._mixer_attr)

    def _scaled(self, out: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
        out = out if gain is None else gain * out
        return out if self.residual_multiplier == 1.0 else out * self.residual_multiplier
