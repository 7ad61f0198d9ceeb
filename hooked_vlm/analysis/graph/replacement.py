"""The local replacement model: transcoders in place of the MLPs, attention patterns and norm scales frozen.

:func:`clean_run` runs the model once (explicit attention path) and keeps what the replacement freezes:

* every language-model norm's ``hook_scale`` (``ln1``, ``ln2``, sandwich ``ln1_post`` / ``ln2_post``, q/k norms,
  ``ln_final``): a norm becomes ``x / scale * w (+ b)``, linear in x;
* every block's ``attn.hook_pattern``: attention becomes ``pattern @ V(x) W_O``, linear in x;
* at each transcoder's input hook, the input x[l] and the features ``act[l] = encode(x[l])``;
* at each transcoder's output hook (``hook_mlp_out``: after Gemma's ``ln2_post``, which the transcoder
  replaces with the MLP), the real output and the **error** ``real - transcoder(x[l])``.

:func:`frozen_hooks` turns that into forward hooks: at every output hook the block adds
``decode(act) + b_dec + error + x[l] @ W_skip.T`` instead of the MLP's output, where ``act`` and ``error`` are
constants (the nodes of the graph) and only the skip term follows the current x. With the clean features and
errors this reproduces the model's forward exactly; everything the hooks return is a linear (affine) function
of the input embeddings, the feature activations and the errors, which is what the attribution graph differentiates.
Final-logit soft-capping is not linear: the graph's logits are taken before the cap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .transcoders import TranscoderSet

FREEZE_SUFFIXES = ("hook_scale", "attn.hook_pattern")


def _lm_frozen_name(name: str) -> bool:
    return (name.startswith("blocks.") or name.startswith("ln_final.")) and name.endswith(FREEZE_SUFFIXES)


def single_item(inputs: dict) -> dict:
    """``inputs`` if it is one unpadded batch item; a clear error otherwise."""
    ids = inputs.get("input_ids")
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.shape[0] != 1:
        raise ValueError(f"an attribution graph explains one prompt: input_ids must be [1, pos], got "
                         f"{tuple(getattr(ids, 'shape', ()))}; pass one item (e.g. {{k: v[:1] for k, v in inputs.items()}})")
    mask = inputs.get("attention_mask")
    if mask is not None and not bool(mask.bool().all()):
        raise ValueError("the prompt holds padding (attention_mask has zeros); drop the padded positions first")
    return inputs


def frozen_inputs(model: Any, inputs: dict, n: int) -> dict:
    """``n`` copies of a one-item prompt for the frozen forward, without its images: ``hook_embed`` is replaced by the
    clean embeddings (image embeddings included) and every attention pattern is frozen, so the vision tower need
    not run again; image placeholders become token 0 and only ids, mask and positions are kept (the attention mask
    policy's input, e.g. Gemma 3's ``token_type_ids``, is dropped with the images: the patterns are frozen anyway)."""
    keep = {"input_ids", "attention_mask", "position_ids"}
    out = {}
    for k, v in inputs.items():
        if k not in keep or not isinstance(v, Tensor):
            continue
        if k == "input_ids" and model.cfg.roles is not None:
            v = v.masked_fill(v == model.cfg.roles.image_token_id, 0)
        out[k] = v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v.expand(v.shape[0], n, *v.shape[2:])
    return out


@dataclass
class CleanRun:
    """What one clean forward leaves for the replacement model (batch item 0, no batch dimension)."""

    logits: Tensor  # [pos, d_vocab] the model's logits (after any final soft-cap)
    final: Tensor  # [pos, d_model] ln_final.hook_normalized: the pre-cap logits are final @ W_U
    embeds: Tensor  # [pos, d_model] hook_embed: the input nodes' vectors (image positions hold image embeddings)
    x_in: list[Tensor]  # per layer [pos, d_in] transcoder inputs
    pre: list[Tensor]  # per layer [pos, d_sae] encoder pre-activations
    acts: list[Tensor]  # per layer [pos, d_sae] feature activations
    errors: list[Tensor]  # per layer [pos, d_out] real output - transcoder output
    frozen: dict[str, Tensor]  # hook name -> cached [1, ...] norm scale / attention pattern
    spans: Any = None
    inputs: dict = field(default_factory=dict)


def check_model(model: Any, ts: TranscoderSet) -> None:
    if ts.n_layers != model.cfg.n_layers:
        raise ValueError(f"the transcoder set covers {ts.n_layers} layers; the model has {model.cfg.n_layers}: a "
                         "replacement model needs one transcoder per layer")
    if getattr(model.cfg.text, "deepstack_layers", 0):
        raise ValueError("DeepStack features are added outside the blocks' hooks; attribution graphs do not "
                         "support DeepStack models (Qwen3-VL) yet")
    for l, block in enumerate(model.blocks):
        if not hasattr(getattr(block, "attn", None), "hook_pattern"):
            raise ValueError(f"block {l}'s token mixer has no attention pattern to freeze ({type(getattr(block, 'attn', None)).__name__}); "
                             "attribution graphs need attention in every layer")
    for hook in ts.input_hooks + ts.output_hooks:
        model._resolve_hook_name(hook)


@torch.no_grad()
def clean_run(model: Any, inputs: dict, ts: TranscoderSet) -> CleanRun:
    """One forward of the real model caching what :func:`frozen_hooks` freezes, and the transcoders' features."""
    single_item(inputs)
    check_model(model, ts)
    names = set(ts.input_hooks) | set(ts.output_hooks) | {"hook_embed", "ln_final.hook_normalized"}
    logits, cache = model.run_with_cache(**inputs, names_filter=lambda n: n in names or _lm_frozen_name(n))
    frozen = {n: cache[n].detach().clone() for n in cache.keys() if _lm_frozen_name(n)}
    x_in = [cache[h][0].to(ts.W_enc[l].dtype) for l, h in enumerate(ts.input_hooks)]
    pre = [ts.pre_activations(l, x) for l, x in enumerate(x_in)]
    acts = [ts.activate(l, p) for l, p in enumerate(pre)]
    acts_by_layer = dict(enumerate(acts))
    errors = []
    for l, h in enumerate(ts.output_hooks):
        recon = ts.decode_to(l, acts_by_layer)
        skip = ts.skip(l, x_in[l])
        if skip is not None:
            recon = recon + skip
        errors.append(cache[h][0].to(recon.dtype) - recon)
    return CleanRun(logits[0], cache["ln_final.hook_normalized"][0].clone(), cache["hook_embed"][0].clone(), x_in,
                    pre, acts, errors, frozen, cache.spans, dict(inputs))


@dataclass
class FrozenState:
    """Tensors of one frozen forward: the leaves gradients are taken against, and what the hooks read."""

    embed: Tensor  # [B, pos, d_model]
    writes: list[Tensor]  # per layer [B, pos, d_out]: decode(act) + b_dec + error (the constant part of each write)
    reads: list[Tensor | None]  # per layer [B, pos, d_in]: the transcoder input in this forward
    final: Tensor | None = None  # [B, pos, d_model] ln_final.hook_normalized


def frozen_hooks(run: CleanRun, ts: TranscoderSet, batch: int = 1, acts: list[Tensor] | None = None,
                 errors: bool = True, sources: bool = True, grad: bool = False) -> tuple[list, FrozenState]:
    """Forward hooks of the frozen replacement over ``batch`` copies of the prompt, and their state.

    ``acts`` (default the clean ones) are the feature activations, per layer [pos, d_sae] or [batch, pos, d_sae];
    ``errors=False`` drops the error nodes; ``sources=False`` zeroes every node (embeddings, features, errors) so
    the forward gives the constant terms (biases through the frozen system); ``grad=True`` makes ``embed`` and
    ``writes`` leaves that require grad."""
    acts = run.acts if acts is None else acts
    embed = run.embeds if sources else torch.zeros_like(run.embeds)
    embed = embed.expand(batch, *embed.shape).clone().requires_grad_(grad)
    writes = []
    for l in range(ts.n_layers):
        per_src = {src: (a if sources else torch.zeros_like(a)) for src, a in enumerate(acts[: l + 1])}
        w = ts.decode_to(l, per_src)
        if errors and sources:
            w = w + run.errors[l]
        w = w.expand(batch, *run.errors[l].shape) if w.ndim == 2 else w
        writes.append(w.clone().requires_grad_(grad))
    state = FrozenState(embed, writes, [None] * ts.n_layers)

    def freeze(x: Tensor, hook: Any) -> Tensor:
        return run.frozen[hook.name].to(x.dtype).expand_as(x)

    def put_embed(x: Tensor, hook: Any) -> Tensor:
        return state.embed.to(x.dtype)

    def read(x: Tensor, hook: Any, layer: int) -> Tensor:
        state.reads[layer] = x
        return x

    def write(x: Tensor, hook: Any, layer: int) -> Tensor:
        out = state.writes[layer]
        skip = ts.skip(layer, state.reads[layer].to(out.dtype))
        return (out if skip is None else out + skip).to(x.dtype)

    def final(x: Tensor, hook: Any) -> Tensor:
        state.final = x
        return x

    hooks: list[tuple[str, Callable]] = [(n, freeze) for n in run.frozen]
    hooks.append(("hook_embed", put_embed))
    for l in range(ts.n_layers):
        hooks.append((ts.input_hooks[l], lambda x, hook, l=l: read(x, hook, l)))
        hooks.append((ts.output_hooks[l], lambda x, hook, l=l: write(x, hook, l)))
    hooks.append(("ln_final.hook_normalized", final))
    return hooks, state


def replacement_forward(model: Any, run: CleanRun, ts: TranscoderSet, batch: int = 1, **kwargs: Any
                        ) -> tuple[Tensor, FrozenState]:
    """The frozen replacement's logits [batch, pos, d_vocab] (soft-capped like the model's) and its state.

    ``kwargs`` go to :func:`frozen_hooks` (``acts=``, ``errors=``, ``sources=``, ``grad=``)."""
    hooks, state = frozen_hooks(run, ts, batch, **kwargs)
    with model.hooks(fwd_hooks=hooks):
        logits = model(**frozen_inputs(model, run.inputs, batch))
    return logits, state


def replacement_logits(model: Any, inputs: dict, transcoders: Any, errors: bool = True) -> Tensor:
    """Logits [pos, d_vocab] of the frozen local replacement model of ``inputs`` (one item).

    With ``errors=True`` they equal the model's own logits (the replacement is exact by construction);
    ``errors=False`` shows what the transcoders alone explain (attention and norms still frozen)."""
    from .transcoders import as_transcoder_set

    ts = as_transcoder_set(transcoders).to(model.device, model.dtype)
    run = clean_run(model, inputs, ts)
    with torch.no_grad():
        return replacement_forward(model, run, ts, errors=errors)[0][0]
