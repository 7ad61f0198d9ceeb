"""Transcoders as the attribution graph sees them: one plain-tensor set, read from SAELens objects or from files.

A :class:`TranscoderSet` replaces the MLP of every language-model layer ``l``: it reads the activation at
``input_hooks[l]`` (e.g. ``blocks.l.ln2.hook_normalized``), encodes it into sparse features and writes
``output_hooks[l]`` (``blocks.l.hook_mlp_out``, what the block adds to the residual stream)::

    pre[l]  = x[l] @ W_enc[l] + b_enc[l]                       # [pos, d_sae]
    act[l]  = relu(pre[l])            (JumpReLU: * (pre[l] > threshold[l]), SAELens's order)
    out[l'] = sum_{l <= l'} act[l] @ W_dec[l, l'] + b_dec[l'] + x[l'] @ W_skip[l'].T   (skip: optional)

A per-layer transcoder (PLT) set has decoders ``(l, l)`` only; a cross-layer transcoder (CLT) writes from
layer ``l`` to every ``l' >= l``. Sources:

* :meth:`TranscoderSet.from_saelens`: SAELens ``Transcoder`` / ``SkipTranscoder`` / ``JumpReLUTranscoder`` /
  ``JumpReLUSkipTranscoder`` (or anything with their attributes), one per layer, hooks from their metadata;
* :meth:`TranscoderSet.from_circuit_tracer`: circuit-tracer's files, single-layer (``layer_{i}.safetensors``:
  ``W_enc`` [d_sae, d_model], ``W_dec``, ``b_enc``, ``b_dec``, ``activation_function.threshold``, ``W_skip``)
  or cross-layer (``W_enc_{i}.safetensors`` with ``W_enc_i`` / ``b_enc_i`` / ``b_dec_i`` / ``threshold_i`` and
  ``W_dec_{i}.safetensors`` with ``W_dec_i`` [d_sae, n_layers - i, d_model]);
* :meth:`TranscoderSet.from_gemma_scope_2`: Google's Gemma Scope 2 layout (``layer_{l}_.../params.safetensors``
  with ``w_enc`` [d_in, d_sae], ``w_dec``, ``b_enc``, ``b_dec``, ``threshold``, ``affine_skip_connection``), read
  the way SAELens's ``gemma_3`` loader reads it (``W_skip = affine_skip_connection``, applied as ``x @ W_skip.T``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

#: hook names other libraries use for a layer's MLP input, and ours: Gemma Scope 2's ``hook_mlp_in`` is the
#: output of ``pre_feedforward_layernorm`` (its ``hf_hook_name``), i.e. our ``ln2.hook_normalized``
HOOK_ALIASES = {"hook_mlp_in": "ln2.hook_normalized"}
ACTIVATIONS = ("relu", "jumprelu")


def _layer_of(hook: str) -> int:
    m = re.match(r"blocks\.(\d+)\.", hook)
    if m is None:
        raise ValueError(f"transcoder hook {hook!r} is not a language-model block hook (blocks.<layer>.<name>)")
    return int(m.group(1))


def resolve_hook(hook: str) -> str:
    """Our hook name for a transcoder hook written by another library (see :data:`HOOK_ALIASES`)."""
    layer = _layer_of(hook)
    rest = hook.split(".", 2)[2]
    return f"blocks.{layer}.{HOOK_ALIASES.get(rest, rest)}"


@dataclass
class TranscoderSet:
    """Plain tensors of a PLT or CLT set; layers ``0 .. n_layers - 1`` each have an encoder.

    ``W_enc[l]`` [d_in, d_sae], ``b_enc[l]`` [d_sae], ``threshold[l]`` [d_sae] or None (ReLU),
    ``W_dec[(l, l2)]`` [d_sae, d_out] for every decoder (l <= l2), ``b_dec[l]`` [d_out],
    ``W_skip[l]`` [d_out, d_in] or None."""

    W_enc: list[Tensor]
    b_enc: list[Tensor]
    W_dec: dict[tuple[int, int], Tensor]
    b_dec: list[Tensor]
    input_hooks: list[str]
    output_hooks: list[str]
    threshold: list[Tensor | None] = field(default_factory=list)
    W_skip: list[Tensor | None] = field(default_factory=list)
    scan: str = "hooked_vlm"  # circuit-tracer's name for the transcoder set (its graph files carry it)

    def __post_init__(self) -> None:
        n = len(self.W_enc)
        self.threshold = self.threshold or [None] * n
        self.W_skip = self.W_skip or [None] * n
        for name in ("b_enc", "b_dec", "input_hooks", "output_hooks", "threshold", "W_skip"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"TranscoderSet: {name} has {len(getattr(self, name))} entries for {n} layers")
        for l in range(n):
            for hook in (self.input_hooks[l], self.output_hooks[l]):
                if _layer_of(hook) != l:
                    raise ValueError(f"the transcoder of layer {l} names hook {hook!r} of another layer; give one "
                                     "transcoder per layer, in layer order")
            if (l, l) not in self.W_dec:
                raise ValueError(f"the transcoder of layer {l} has no decoder to its own layer")
        for (src, dst), w in self.W_dec.items():
            if not 0 <= src <= dst < n:
                raise ValueError(f"decoder ({src} -> {dst}) must write to its own or a later layer (< {n})")
            if w.shape != (self.d_sae, self.b_dec[dst].shape[0]):
                raise ValueError(f"decoder ({src} -> {dst}) has shape {tuple(w.shape)}, expected "
                                 f"{(self.d_sae, self.b_dec[dst].shape[0])}")

    @property
    def n_layers(self) -> int:
        return len(self.W_enc)

    @property
    def d_sae(self) -> int:
        return int(self.b_enc[0].shape[0])

    @property
    def cross_layer(self) -> bool:
        return any(src != dst for src, dst in self.W_dec)

    def targets_of(self, layer: int) -> list[int]:
        """The layers that features of ``layer`` write to (just ``layer`` for a PLT)."""
        return sorted(dst for src, dst in self.W_dec if src == layer)

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> "TranscoderSet":
        mv = lambda t: None if t is None else t.detach().to(device=device, dtype=dtype)  # noqa: E731
        return TranscoderSet([mv(t) for t in self.W_enc], [mv(t) for t in self.b_enc],
                             {k: mv(t) for k, t in self.W_dec.items()}, [mv(t) for t in self.b_dec],
                             list(self.input_hooks), list(self.output_hooks), [mv(t) for t in self.threshold],
                             [mv(t) for t in self.W_skip], self.scan)

    # ---------------------------------------------------------------- the math
    def pre_activations(self, layer: int, x: Tensor) -> Tensor:
        """[..., d_sae] encoder pre-activations of ``layer`` for inputs x [..., d_in]."""
        return x @ self.W_enc[layer] + self.b_enc[layer]

    def activate(self, layer: int, pre: Tensor) -> Tensor:
        out = torch.relu(pre)
        thr = self.threshold[layer]
        return out if thr is None else out * (pre > thr).to(pre.dtype)

    def encode(self, layer: int, x: Tensor) -> Tensor:
        return self.activate(layer, self.pre_activations(layer, x))

    def skip(self, layer: int, x: Tensor) -> Tensor | None:
        w = self.W_skip[layer]
        return None if w is None else x @ w.T

    def decode_to(self, dst: int, acts: dict[int, Tensor]) -> Tensor:
        """What the features (``acts[src]`` [..., d_sae] for every source layer) write to layer ``dst``, + b_dec."""
        out = self.b_dec[dst]
        for src in range(dst + 1):
            w = self.W_dec.get((src, dst))
            if w is not None and src in acts:
                out = out + acts[src] @ w
        return out

    # ---------------------------------------------------------------- sources
    @classmethod
    def from_saelens(cls, saes: Sequence[Any], input_hook: str | None = None, output_hook: str | None = None,
                     scan: str = "hooked_vlm") -> "TranscoderSet":
        """One SAELens transcoder per layer (layer order). ``input_hook`` / ``output_hook`` (templates with
        ``{layer}``) override the hooks in their metadata."""
        W_enc, b_enc, W_dec, b_dec, ins, outs, thr, skip = [], [], {}, [], [], [], [], []
        for l, sae in enumerate(saes):
            cfg = getattr(sae, "cfg", None)
            meta = getattr(cfg, "metadata", None)
            arch = cfg.architecture() if callable(getattr(cfg, "architecture", None)) else "standard"
            if arch not in ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder",
                            "standard"):
                raise ValueError(f"transcoder {l} has SAELens architecture {arch!r}; attribution graphs take "
                                 "(skip) transcoders with ReLU or JumpReLU features")
            norm = getattr(cfg, "normalize_activations", "none")
            if norm not in (None, "none"):
                raise ValueError(f"transcoder {l} normalises its input ({norm!r}): that is not linear; fold the "
                                 "normalisation into the weights first")
            hook_in = input_hook.format(layer=l) if input_hook else getattr(meta, "hook_name", None)
            hook_out = output_hook.format(layer=l) if output_hook else getattr(meta, "hook_name_out", None)
            if not hook_in or not hook_out:
                raise ValueError(f"transcoder {l} names no input and output hook (cfg.metadata.hook_name / "
                                 "hook_name_out); pass input_hook='blocks.{layer}.ln2.hook_normalized', "
                                 "output_hook='blocks.{layer}.hook_mlp_out'")
            ins.append(resolve_hook(hook_in))
            outs.append(resolve_hook(hook_out))
            W_enc.append(sae.W_enc.detach())
            b_enc.append(sae.b_enc.detach())
            W_dec[(l, l)] = sae.W_dec.detach()
            b_dec.append(sae.b_dec.detach())
            t = getattr(sae, "threshold", None)
            thr.append(None if t is None else t.detach())
            s = getattr(sae, "W_skip", None)
            skip.append(None if s is None else s.detach())
        return cls(W_enc, b_enc, W_dec, b_dec, ins, outs, thr, skip, scan)

    @classmethod
    def from_circuit_tracer(cls, path: str | Path, input_hook: str = "blocks.{layer}.hook_resid_mid",
                            output_hook: str = "blocks.{layer}.hook_mlp_out", scan: str | None = None,
                            ) -> "TranscoderSet":
        """circuit-tracer's single-layer (``layer_{i}.safetensors``) or cross-layer (``W_enc_{i}`` /
        ``W_dec_{i}.safetensors``) files in folder ``path``. Its configs name TL hooks without the block
        (``feature_input_hook: hook_resid_mid``): pass ours as templates (``blocks.{layer}.ln2.hook_normalized``)."""
        from safetensors.torch import load_file

        path = Path(path)
        plt = sorted(path.glob("layer_*.safetensors"), key=lambda p: int(p.stem.split("_")[1]))
        clt = sorted(path.glob("W_enc_*.safetensors"), key=lambda p: int(p.stem.split("_")[2]))
        if bool(plt) == bool(clt):
            raise FileNotFoundError(f"{path} holds {'both' if plt else 'neither'} circuit-tracer single-layer "
                                    "(layer_{i}.safetensors) "
                                    f"{'and' if plt else 'nor'} cross-layer (W_enc_{{i}}.safetensors) files")
        files = plt or clt
        n = len(files)
        expect = [f"layer_{i}" if plt else f"W_enc_{i}" for i in range(n)]
        if [f.stem for f in files] != expect:
            raise FileNotFoundError(f"{path}: expected files for layers 0..{n - 1}, found {[f.stem for f in files]}")
        W_enc, b_enc, W_dec, b_dec, thr, skip = [], [], {}, [], [], []
        for i, f in enumerate(files):
            sd = load_file(str(f))
            key = (lambda k: k) if plt else (lambda k: f"{k}_{i}")
            W_enc.append(sd[key("W_enc")].T.contiguous())  # stored [d_sae, d_model]
            b_enc.append(sd[key("b_enc")])
            b_dec.append(sd[key("b_dec")])
            thr.append(sd.get("activation_function.threshold") if plt else sd.get(f"threshold_{i}"))
            if plt:
                W_dec[(i, i)] = sd["W_dec"]
                skip.append(sd.get("W_skip"))  # applied as x @ W_skip.T (SingleLayerTranscoder.compute_skip)
            else:
                dec = load_file(str(path / f"W_dec_{i}.safetensors"))[f"W_dec_{i}"]  # [d_sae, n - i, d_model]
                if dec.shape[1] != n - i:
                    raise ValueError(f"W_dec_{i} writes to {dec.shape[1]} layers; a CLT's layer {i} writes to {n - i}")
                for j in range(n - i):
                    W_dec[(i, i + j)] = dec[:, j]
                skip.append(None)
        if clt and (path / "W_skip.safetensors").is_file():
            raise ValueError("circuit-tracer cross-layer skip connections are not read here")
        return cls(W_enc, b_enc, W_dec, b_dec, [input_hook.format(layer=l) for l in range(n)],
                   [output_hook.format(layer=l) for l in range(n)], thr, skip, scan or path.name)

    def to_circuit_tracer(self, path: str | Path) -> Path:
        """Write circuit-tracer's files (what its ``to_safetensors`` writes): ``layer_{i}.safetensors`` for a
        PLT set, ``W_enc_{i}`` / ``W_dec_{i}.safetensors`` for a CLT."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        n = self.n_layers
        for i in range(n):
            if not self.cross_layer:
                sd = {"W_enc": self.W_enc[i].T, "W_dec": self.W_dec[(i, i)], "b_enc": self.b_enc[i],
                      "b_dec": self.b_dec[i]}
                if self.threshold[i] is not None:
                    sd["activation_function.threshold"] = self.threshold[i]
                if self.W_skip[i] is not None:
                    sd["W_skip"] = self.W_skip[i]
                save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(path / f"layer_{i}.safetensors"))
                continue
            if self.W_skip[i] is not None:
                raise ValueError("circuit-tracer's cross-layer files have no skip connection to write")
            enc = {f"W_enc_{i}": self.W_enc[i].T, f"b_enc_{i}": self.b_enc[i], f"b_dec_{i}": self.b_dec[i]}
            if self.threshold[i] is not None:
                enc[f"threshold_{i}"] = self.threshold[i]
            dec = torch.stack([self.W_dec.get((i, j), torch.zeros_like(self.W_dec[(i, i)])) for j in range(i, n)], 1)
            save_file({k: v.detach().cpu().contiguous() for k, v in enc.items()}, str(path / f"W_enc_{i}.safetensors"))
            save_file({f"W_dec_{i}": dec.detach().cpu().contiguous()}, str(path / f"W_dec_{i}.safetensors"))
        return path

    @classmethod
    def from_gemma_scope_2(cls, folders: Sequence[str | Path], input_hook: str = "blocks.{layer}.ln2.hook_normalized",
                           output_hook: str = "blocks.{layer}.hook_mlp_out", scan: str = "gemma-scope-2"
                           ) -> "TranscoderSet":
        """Gemma Scope 2 transcoders, one folder per layer in layer order (``.../transcoder_all/layer_{l}_width_16k_
        l0_small[_affine]``, each with ``params.safetensors``), read as SAELens's ``gemma_3`` loader reads them:
        input = ``pre_feedforward_layernorm`` output (our ``ln2.hook_normalized``), output =
        ``post_feedforward_layernorm`` output (our ``hook_mlp_out``)."""
        from safetensors.torch import load_file

        W_enc, b_enc, W_dec, b_dec, thr, skip = [], [], {}, [], [], []
        for l, folder in enumerate(folders):
            m = re.search(r"layer_(\d+)", Path(folder).name)
            if m is None or int(m.group(1)) != l:
                raise ValueError(f"folder {folder} is not layer {l}'s (Gemma Scope 2 folders are named layer_<l>_...; "
                                 "give one per layer, in layer order)")
            f = Path(folder) / "params.safetensors"
            if not f.is_file():
                raise FileNotFoundError(f"{f} does not exist (a Gemma Scope 2 folder holds params.safetensors)")
            sd = load_file(str(f))
            W_enc.append(sd["w_enc"])
            b_enc.append(sd["b_enc"])
            W_dec[(l, l)] = sd["w_dec"]
            b_dec.append(sd["b_dec"])
            thr.append(sd["threshold"])
            skip.append(sd.get("affine_skip_connection"))
        n = len(W_enc)
        return cls(W_enc, b_enc, W_dec, b_dec, [input_hook.format(layer=l) for l in range(n)],
                   [output_hook.format(layer=l) for l in range(n)], thr, skip, scan)


def as_transcoder_set(transcoders: Any) -> TranscoderSet:
    """A :class:`TranscoderSet` from one, or from a list of SAELens transcoders."""
    if isinstance(transcoders, TranscoderSet):
        return transcoders
    if isinstance(transcoders, (list, tuple)) and transcoders:
        return TranscoderSet.from_saelens(transcoders)
    raise TypeError(f"transcoders must be a TranscoderSet or a list of SAELens transcoders (one per layer), got "
                    f"{type(transcoders).__name__}")
