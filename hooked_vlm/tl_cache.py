"""The ActivationCache ``run_with_cache`` returns: TransformerLens's, with the norm weights applied where TL folds them.

TransformerLens loads models with ``fold_ln=True``: each norm's weight is multiplied into the matrix that reads the
norm (``ln_final``'s into ``W_U``), and its cache helpers work in the weight-free space that is left: the
cached-scale ``apply_ln_to_stack`` divides by ``hook_scale`` and nothing else, and ``tokens_to_residual_directions``
returns the folded ``W_U`` columns. HookedVLM keeps HF's weights (every hook equals HF's), so its ``W_U`` and
directions are unfolded, and TL's cache code alone would leave the weight out of every direct logit attribution
(``logit_attrs`` summing to 10.34 where the logit is 12.31 on toy-llava).

:class:`VLMActivationCache` makes the cache side carry the weight instead: ``apply_ln_to_stack`` (and everything
built on it: ``logit_attrs``, ``decompose_resid`` / ``accumulated_resid`` / ``stack_head_results`` /
``get_full_resid_decomposition`` with ``apply_ln=True``) multiplies by the weight of the norm the stack is the input
of -- ``(1 + w)`` for Gemma's offset norms -- exactly what that norm does after dividing by its scale. The
recomputing path (``recompute_ln=True``, the default of ``accumulated_resid(apply_ln=True)``) runs ``model.ln_final``,
which applies its weight already. So every normalised stack is what the norm would output for it (without the
norm's bias, a constant), and every product with a raw weight is exact:

    normalised_stack @ model.W_U                      == TL's normalised_stack @ TL's (folded) W_U
    cache.logit_attrs(stack, tokens)                  == TL's (fold_ln=True) logit_attrs, output for output
    cache.logit_attrs(cache.decompose_resid(), t).sum(0) == logits[..., t] - ln_final.b @ W_U[:, t]

(``ln_final.b`` exists only for LayerNorm models with a bias; Gemma 2's final soft-cap acts after the logit.)
Our stacks equal TL's times the weight and our directions equal TL's divided by it; tests/test_tl_dla.py checks
both against TransformerLens's HookedTransformer on the same weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformer_lens.ActivationCache import ActivationCache

from .activation_cache import VLMBatchMixin


def norm_gain(model: Any, layer: int | None, mlp_input: bool = False) -> Tensor:
    """[d_model] float32: what the norm read at the input of ``layer`` multiplies by after dividing by its scale.

    ``layer`` None / -1 / n_layers: ``ln_final``; else block ``layer``'s ``ln1`` (``ln2`` with ``mlp_input``)."""
    n = model.cfg.n_layers
    if layer is None or layer == -1 or layer == n:
        if mlp_input:
            raise ValueError("mlp_input=True names a block's ln2; the unembed's input (layer n_layers) has ln_final only")
        norm = model.ln_final
    else:
        if not 0 <= layer < n:
            raise ValueError(f"layer {layer} is out of range: the input of a block 0..{n - 1}, or {n} / -1 / None for "
                             "the unembed")
        if model.cfg.text.norm_placement == "post_sublayer":
            raise ValueError("this model's block norms act on the sublayer outputs (norm_placement='post_sublayer'), "
                             "not on the block's input: there is no input norm to apply; use the final layer "
                             "(layer=None) or the raw stack")
        if mlp_input and model.cfg.text.parallel_block:
            raise ValueError("mlp_input=True names a block's ln2, and this model's blocks are parallel (one norm, ln1, "
                             "feeds attention and the MLP; no ln2, no hook_resid_mid): use mlp_input=False")
        norm = model.blocks[layer].ln2 if mlp_input else model.blocks[layer].ln1
    w = norm.w.float()
    return w + norm.weight_offset if norm.weight_offset else w


class VLMActivationCache(VLMBatchMixin, ActivationCache):
    """TransformerLens's ActivationCache with each norm's weight applied in ``apply_ln_to_stack`` (module docstring),
    and (VLMBatchMixin, hooked_vlm.activation_cache) its batch size, ``spans`` and the VLM's batch / position slicing."""

    def apply_ln_to_stack(self, residual_stack: Tensor, layer: int | None = None, mlp_input: bool = False,
                          pos_slice: Any = None, batch_slice: Any = None, has_batch_dim: bool = True,
                          recompute_ln: bool = False) -> Tensor:
        """TL's apply_ln_to_stack, then the norm's weight: the norm's output for each component (bias left out).

        With ``recompute_ln=True`` at the unembed, ``model.ln_final`` itself runs on each component (weight and
        bias included), as in TL."""
        final = layer is None or layer == -1 or layer == self.model.cfg.n_layers
        gain = norm_gain(self.model, layer, mlp_input)  # checks layer / mlp_input before TL does
        out = super().apply_ln_to_stack(residual_stack, layer, mlp_input=mlp_input, pos_slice=pos_slice,
                                        batch_slice=batch_slice, has_batch_dim=has_batch_dim, recompute_ln=recompute_ln)
        if final and recompute_ln:
            return out  # ln_final ran: weight applied
        return out * gain.to(out.device, out.dtype)

    def _stack_neuron_results_apply_ln_projected(self, layer: int, pos_slice: Any, neuron_slice: Any,
                                                 project_2d: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """TL's fused LN + projection of every neuron's output: the weight goes into the projection,
        ``(x / s * g) @ p == (x / s) @ (g[:, None] * p)``, so the result equals ``apply_ln_to_stack(...) @ p``."""
        self._check_additive("stack_neuron_results")
        mlp_input = kwargs.get("mlp_input", args[0] if args else False)
        gain = norm_gain(self.model, layer, mlp_input)
        weighted = gain.to(project_2d.device, project_2d.dtype)[:, None] * project_2d
        return super()._stack_neuron_results_apply_ln_projected(layer, pos_slice, neuron_slice, weighted, *args, **kwargs)

    def compute_head_results(self, *args: Any, **kwargs: Any) -> Any:
        self._check_additive("per-head results (compute_head_results)")
        return super().compute_head_results(*args, **kwargs)

    def stack_head_results(self, *args: Any, **kwargs: Any) -> Any:
        self._check_additive("per-head results (stack_head_results)")
        return super().stack_head_results(*args, **kwargs)

    def get_neuron_results(self, *args: Any, **kwargs: Any) -> Any:
        self._check_additive("per-neuron results (get_neuron_results)")
        self._check_dense("get_neuron_results")
        return super().get_neuron_results(*args, **kwargs)

    def stack_neuron_results(self, *args: Any, **kwargs: Any) -> Any:
        self._check_additive("per-neuron results (stack_neuron_results)")
        self._check_dense("stack_neuron_results")
        return super().stack_neuron_results(*args, **kwargs)

    def _check_dense(self, what: str) -> None:
        moe = [l for l, b in enumerate(self.model.blocks) if not hasattr(b.mlp, "W_out")]
        if moe:
            raise NotImplementedError(f"{what}: blocks {moe} are mixture-of-experts layers, whose output is not "
                                      "post * W_out of one MLP; use expand_neurons=False / decompose_resid")

    def _check_additive(self, what: str) -> None:
        t = self.model.cfg.text
        if t.norm_placement != "pre" or t.layer_scale:
            why = f"norm_placement={t.norm_placement!r}" if t.norm_placement != "pre" else "layer_scale"
            raise NotImplementedError(
                f"{what}: this model normalises (or scales) each sublayer's output before adding it ({why}), so "
                "z @ W_O per head and post * W_out per neuron do not sum to hook_attn_out / hook_mlp_out; use "
                "decompose_resid (whole attn_out / mlp_out per layer), which is exact")

    def decompose_resid(self, *args: Any, **kwargs: Any) -> Any:
        self._check_decomposable("decompose_resid")
        return super().decompose_resid(*args, **kwargs)

    def get_full_resid_decomposition(self, *args: Any, **kwargs: Any) -> Any:
        self._check_decomposable("get_full_resid_decomposition")
        self._check_additive("get_full_resid_decomposition (per-head and per-neuron results)")
        if kwargs.get("expand_neurons", args[2] if len(args) > 2 else True):
            self._check_dense("get_full_resid_decomposition(expand_neurons=True)")
        return super().get_full_resid_decomposition(*args, **kwargs)

    def _check_decomposable(self, what: str) -> None:
        n = self.model.cfg.text.deepstack_layers
        if n:
            raise NotImplementedError(
                f"{what}: this model adds DeepStack image features to the residual stream after "
                f"blocks.0-{n - 1}.hook_resid_post (blocks.L.hook_deepstack), which TransformerLens's decomposition "
                "(embed + attn_out + mlp_out) leaves out, so its components would not sum to the residual stream")
