"""SAELens SAEs spliced into a HookedVLM at any hook point, with SAELens's semantics.

``model.add_sae(sae)`` puts the SAE at ``sae.cfg.metadata.hook_name`` (or ``hook_name=``): from then
on the SAE's reconstruction replaces the activation there, in every forward and in ``generate``,
until ``model.reset_saes()``. ``with model.saes([sae, ...]):``, ``run_with_saes``,
``run_with_cache_with_saes`` and ``run_with_hooks_with_saes`` splice for one block or call and
restore what was there before (SAELens's ``HookedSAETransformer`` API, on a VLM).

What we add to SAELens's semantics:

* ``spans=`` restricts the SAE to chosen roles of the language model's sequence (``"image"``,
  ``"text"``, ``"image.0"``, ``"after_image"``, a bool mask, ... as in :mod:`hooked_vlm.span_select`):
  the rest passes through bitwise unchanged (the SAE still reads every position; only the span's
  positions take its output, as SAELens's ``exclude_special_tokens`` does). Vision-tower and
  projector hooks have no sequence spans: the SAE acts on every patch there.
* The hook point keeps its name: ``blocks.3.hook_resid_post`` still exists (hooks on it see the
  activation that flows on, i.e. the SAE's output), and the SAE's own hook points join the model's
  ``hook_dict`` under it: ``blocks.3.hook_resid_post.hook_sae_input`` / ``.hook_sae_acts_pre`` /
  ``.hook_sae_acts_post`` / ``.hook_sae_recons`` / ``.hook_sae_error`` / ``.hook_sae_output``.
  ``run_with_cache`` caches them like any other hook.

``use_error_term=True`` adds the SAE's error ``x - sae(x)`` (computed with the SAE's hooks disabled,
as SAELens does), so the output is unchanged while features can still be read and edited: an edit
at ``hook_sae_acts_post`` then changes the output by exactly the decoded difference.

Any object with SAELens's interface works: ``encode(x)``, ``decode(acts)``, ``cfg.metadata.hook_name``
(and ``hook_name_out`` for transcoders), the ``hook_sae_*`` HookPoints in ``hook_dict``, and
``use_error_term``. sae-lens is never imported here (``pip install hooked_vlm[sae]`` for it).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn

from ..hook_points import HookPoint
from ..span_select import query_rows

#: hook points the model calls only when they are hooked (the fast attention path skips them):
#: an SAE there would silently never run, so it is refused
CONDITIONAL_HOOKS = ("attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_mask", "conv.hook_tap_mask")
#: hook-name prefixes whose activations are not laid out over the language model's sequence
NON_SEQUENCE_PREFIXES = ("vision.", "projector.", "hook_image_embeds")
SAE_HOOKS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error",
             "hook_sae_output")
"""The hook points an SAE spliced at ``{hook}`` adds to ``model.hook_dict``, as ``{hook}.{name}`` (SAELens's names)."""


def sae_hook_names(sae: Any, hook_name: str | None = None, hook_name_out: str | None = None) -> tuple[str, str]:
    """(input hook, output hook) of an SAE (the same hook unless it is a transcoder)."""
    meta = getattr(getattr(sae, "cfg", None), "metadata", None)
    name_in = hook_name or getattr(meta, "hook_name", None)
    if not name_in:
        raise ValueError(f"{type(sae).__name__} names no hook point (sae.cfg.metadata.hook_name is empty); "
                         "pass hook_name=, e.g. model.add_sae(sae, hook_name='blocks.0.hook_resid_post')")
    name_out = hook_name_out or getattr(meta, "hook_name_out", None) or name_in
    return name_in, name_out


_WIDE = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "ln1.hook_normalized",
         "ln2.hook_normalized")


def hook_width(cfg: Any, name: str) -> tuple[int, str] | None:
    """(last-dimension width, what it is) of the activation at hook ``name``, from the config alone; None where the
    config does not say (projector internals, MoE layers, VQ towers): those are checked at the first forward."""
    tower, rest = cfg.text, name
    if name in ("hook_embed", "hook_image_embeds", "ln_final.hook_normalized") or \
            (name.startswith("blocks.") and name.endswith("hook_deepstack")):
        return cfg.text.d_model, "the language model's d_model"
    if name.startswith("vision."):
        tower, rest = getattr(getattr(cfg, "vision", None), "tower", None), name[len("vision."):]
        if tower is None:
            return None
        if rest in ("hook_embed", "hook_patch_embed", "ln_pre.hook_normalized", "ln_post.hook_normalized"):
            return tower.d_model, "the vision tower's d_model"
    where = "the vision tower's" if tower is not cfg.text else "the language model's"
    parts = rest.split(".")
    if len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit():
        return None
    layer, sub = int(parts[1]), ".".join(parts[2:])
    if sub in _WIDE:
        return tower.d_model, f"{where} d_model"
    if sub in ("mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post"):
        moe = getattr(tower, "mlp_kind", "dense") == "moe" and (tower.moe_layers is None or layer in tower.moe_layers)
        return None if moe else (tower.d_mlp, f"{where} d_mlp")
    if sub in ("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k"):
        return tower.d_head, f"{where} d_head (per head: [batch, pos, head, d_head])"
    return None


def check_width(sae: Any, cfg: Any, name_in: str, name_out: str) -> None:
    """The SAE's d_in (d_out for transcoders) against the widths of its hooks, when attached."""
    scfg = getattr(sae, "cfg", None)
    if getattr(scfg, "reshape_activations", "none") != "none":  # e.g. hook_z SAEs read all heads flattened
        return
    for attr, name in (("d_in", name_in), ("d_out", name_out)):
        want, known = getattr(scfg, attr, None), hook_width(cfg, name)
        if want is not None and known is not None and int(want) != known[0]:
            raise ValueError(f"the SAE reads vectors of width {attr}={want} but '{name}' gives vectors of width "
                             f"{known[0]} ({known[1]}); was it trained on another hook or model? (checked when "
                             "attached)")


def _check_sae(sae: Any) -> None:
    missing = [a for a in ("encode", "decode", "hook_dict") if not hasattr(sae, a)]
    if missing:
        raise TypeError(f"{type(sae).__name__} is not an SAE: it lacks {', '.join(missing)} (expected a SAELens SAE, "
                        "e.g. sae_lens.SAE.load_from_disk(path) or SAE.from_pretrained(release, sae_id))")


def _get(root: nn.Module, path: str) -> nn.Module:
    obj: Any = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def _set(root: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, last = path.rpartition(".")
    setattr(_get(root, parent) if parent else root, last, value)


@contextlib.contextmanager
def hooks_disabled(sae: Any) -> Iterator[None]:
    """The SAE's hook points swapped for identities (SAELens's ``_disable_hooks``): clean recomputation."""
    names = list(sae.hook_dict)
    saved = {n: getattr(sae, n) for n in names}
    try:
        for n in names:
            setattr(sae, n, nn.Identity())
        yield
    finally:
        for n, hp in saved.items():
            setattr(sae, n, hp)


class SAESplice(HookPoint):
    """Stands at an output hook in place of its HookPoint: the SAE's output (optionally + error) flows on.

    Keeps the replaced HookPoint's name, run state and shape check; the SAE is not a registered
    submodule (its parameters stay out of ``model.state_dict()``), but its hook points are, so they
    appear in ``model.hook_dict`` as ``{hook_name}.hook_sae_*``.
    """

    def __init__(self, sae: Any, original: HookPoint, use_error_term: bool, spans: Any = None,
                 hook_name_in: str | None = None):
        super().__init__(getattr(original, "_shape_check", None) or (lambda a, b: a.shape == b.shape),
                         getattr(original, "_expected", "the same shape as its input"))
        self.__dict__["_sae"] = sae
        self.__dict__["_original"] = original
        self.run = getattr(original, "run", self.run)
        for name, hook in sae.hook_dict.items():
            if name not in ("hook_sae_error", "hook_sae_output"):
                setattr(self, name, hook)
        self.hook_sae_error = HookPoint()  # [..., d_out] x - clean reconstruction (use_error_term only)
        self.hook_sae_output = HookPoint()  # [..., d_out] what flows on (the activation outside the span)
        self.hook_sae_error.run = self.hook_sae_output.run = self.run
        self.use_error_term = bool(use_error_term)
        self.span = spans
        self.hook_name_in = hook_name_in  # transcoders: the hook whose activation is encoded
        self._captured: Tensor | None = None

    @property
    def sae(self) -> Any:
        return self.__dict__["_sae"]

    @property
    def original(self) -> HookPoint:
        return self.__dict__["_original"]

    def capture_input(self, x: Tensor, hook: Any = None) -> None:
        """Forward hook on a transcoder's input hook point: remember what to encode."""
        self._captured = x

    def _rows(self, x: Tensor) -> Tensor | None:
        if self.span is None:
            return None
        rows = query_rows(self, self.span, x)  # [batch, q_pos] True = the SAE's output flows on
        return rows.reshape(*rows.shape, *([1] * (x.ndim - rows.ndim)))

    def _run(self, sae: Any, sae_in: Tensor) -> Tensor:
        """decode(encode(x)) as SAELens splices an SAE; a transcoder's own forward(x) (its config has ``d_out``),
        which adds the skip connection of skip transcoders (their decode alone lacks it)."""
        if self.hook_name_in is not None and hasattr(getattr(sae, "cfg", None), "d_out"):
            return sae(sae_in)
        return sae.decode(sae.encode(sae_in))

    def forward(self, x: Tensor) -> Tensor:
        sae_in, self._captured = (x if self.hook_name_in is None else self._captured), None
        if sae_in is None:
            raise RuntimeError(f"the transcoder at '{self.name}' got no input from '{self.hook_name_in}' in this forward "
                               "(was its capture hook removed, e.g. by reset_hooks(including_permanent=True)?); "
                               "reset_saes() and add_sae() it again")
        sae = self.sae
        d_in = getattr(getattr(sae, "cfg", None), "d_in", None)
        if d_in is not None and sae_in.shape[-1] != d_in and getattr(sae.cfg, "reshape_activations", "none") == "none":
            raise ValueError(f"the SAE reads vectors of width d_in={d_in} but '{self.hook_name_in or self.name}' gives "
                             f"shape {tuple(sae_in.shape)}; was it trained on another hook or model?")
        rows = self._rows(x)
        out = self._run(sae, sae_in).to(x.dtype)
        if out.shape != x.shape:
            raise ValueError(f"the SAE at '{self.name}' returned shape {tuple(out.shape)} for an activation of shape "
                             f"{tuple(x.shape)}; its decoder must map back to the hook's width")
        if self.use_error_term:
            with torch.no_grad(), hooks_disabled(sae):
                clean = self._run(sae, sae_in).to(x.dtype)
            error = x - clean
            if rows is not None:
                error = torch.where(rows, error, torch.zeros_like(error))
            out = out + self.hook_sae_error(error)
        if rows is not None:
            out = torch.where(rows, out, x)
        return self.hook_sae_output(out)


def _as_list(saes: Any) -> list:
    if saes is None:
        return []
    return list(saes) if isinstance(saes, (list, tuple)) else [saes]


class SAEMixin:
    """``add_sae`` / ``reset_saes`` / ``saes()`` / ``run_with_saes`` / ``run_with_cache_with_saes`` for HookedVLM."""

    @property
    def _sae_splices(self) -> dict[str, SAESplice]:  # input hook name -> splice (at the output hook)
        splices = self.__dict__.get("_sae_splices_dict")
        if splices is None:
            splices = self.__dict__["_sae_splices_dict"] = {}
        return splices

    @property
    def acts_to_saes(self) -> dict[str, Any]:
        """Hook name -> attached SAE (the input hook for transcoders), like SAELens."""
        return {name: s.sae for name, s in self._sae_splices.items()}

    def add_sae(self, sae: Any, hook_name: str | None = None, spans: Any = None, use_error_term: bool | None = None,
                hook_name_out: str | None = None) -> None:
        """Splice ``sae`` at its hook (``sae.cfg.metadata.hook_name`` unless ``hook_name=``) until ``reset_saes``.

        ``spans``: only these positions of the language model's sequence take the SAE's output
        (e.g. ``"image"``); ``use_error_term``: None keeps the SAE's own setting (SAELens). An SAE
        already at the same hook is replaced.
        """
        _check_sae(sae)
        name_in, name_out = sae_hook_names(sae, hook_name, hook_name_out)
        if name_in in self._sae_splices:
            self._reset_sae(name_in)
        for name in (name_in, name_out):
            self._resolve_hook_name(name)  # KeyError with close matches for a wrong name
            if isinstance(self.hook_dict[name], SAESplice):
                raise ValueError(f"'{name}' already holds the output of another SAE (attached at "
                                 f"'{self.hook_dict[name].hook_name_in or name}'); reset_saes() it first")
        if name_out.endswith(CONDITIONAL_HOOKS):
            raise ValueError(f"'{name_out}' is computed only when hooked (the fast attention path skips it); an SAE "
                             "cannot be spliced there. Use hook_z, hook_attn_out or a residual-stream hook instead.")
        if spans is not None and name_out.startswith(NON_SEQUENCE_PREFIXES):
            raise ValueError(f"spans= restricts an SAE to positions of the language model's sequence, but "
                             f"'{name_out}' is a vision-tower/projector activation; drop spans= (the SAE then acts "
                             "on every patch) or splice it at a language-model hook")
        check_width(sae, self.cfg, name_in, name_out)
        self._check_device(sae)
        original = self.hook_dict[name_out]
        use_error = getattr(sae, "use_error_term", False) if use_error_term is None else use_error_term
        splice = SAESplice(sae, original, use_error, spans, hook_name_in=name_in if name_in != name_out else None)
        if name_in != name_out:  # transcoder: capture the input where it is read
            point = self.hook_dict[name_in]
            before = list(point.fwd_hooks)  # TL 3.9's add_hook returns no handle: find the new one
            point.add_hook(lambda tensor, hook: splice.capture_input(tensor), is_permanent=True)
            splice.capture_handle = next(h for h in point.fwd_hooks if h not in before)
        _set(self, name_out, splice)
        self._sae_splices[name_in] = splice
        self.setup()

    def _check_device(self, sae: Any) -> None:
        p = next(iter(sae.parameters()), None) if hasattr(sae, "parameters") else None
        if p is not None and p.device != self.device:
            raise ValueError(f"the SAE is on {p.device} and the model on {self.device}; move it first: "
                             f"sae.to('{self.device}')")

    def _reset_sae(self, name_in: str) -> None:
        splice = self._sae_splices.pop(name_in, None)
        if splice is None:
            raise KeyError(f"no SAE is attached at '{name_in}'; attached: {sorted(self._sae_splices) or 'none'}")
        handle = getattr(splice, "capture_handle", None)
        if handle is not None:
            handle.hook.remove()
            hooks = self.hook_dict[name_in].fwd_hooks
            if handle in hooks:
                hooks.remove(handle)
        _set(self, splice.name, splice.original)
        self.setup()

    def reset_saes(self, act_names: str | Iterable[str] | None = None) -> None:
        """Remove the SAEs at ``act_names`` (default: all) and put the original hook points back."""
        names = list(self._sae_splices) if act_names is None else ([act_names] if isinstance(act_names, str) else list(act_names))
        for name in names:
            self._reset_sae(name)

    @contextlib.contextmanager
    def saes(self, saes: Any = None, reset_saes_end: bool = True, use_error_term: bool | None = None,
             spans: Any = None, hook_name: str | None = None) -> Iterator[Any]:
        """Splice ``saes`` (one or a list) for the block; on exit restore what each hook held before.

        ``hook_name`` (one SAE only) overrides the SAE's own hook, as in ``add_sae``."""
        saes = _as_list(saes)
        if hook_name is not None and len(saes) != 1:
            raise ValueError(f"hook_name= places one SAE; {len(saes)} were given")
        restore: list[tuple[str, SAESplice | None]] = []
        try:
            for sae in saes:
                _check_sae(sae)
                name_in, _ = sae_hook_names(sae, hook_name)
                restore.append((name_in, self._sae_splices.get(name_in)))
                self.add_sae(sae, hook_name=hook_name, spans=spans, use_error_term=use_error_term)
            yield self
        finally:
            if reset_saes_end:
                for name_in, prev in reversed(restore):
                    if name_in in self._sae_splices:
                        self._reset_sae(name_in)
                    if prev is not None:
                        self.add_sae(prev.sae, hook_name=name_in, spans=prev.span, use_error_term=prev.use_error_term,
                                     hook_name_out=prev.name if prev.hook_name_in else None)
                self.setup()

    def run_with_saes(self, *args: Any, saes: Any = None, reset_saes_end: bool = True,
                      use_error_term: bool | None = None, spans: Any = None, **kwargs: Any) -> Any:
        """``model(*args, **kwargs)`` with ``saes`` spliced for this call."""
        with self.saes(saes, reset_saes_end, use_error_term, spans):
            return self(*args, **kwargs)

    def run_with_cache_with_saes(self, *args: Any, saes: Any = None, reset_saes_end: bool = True,
                                 use_error_term: bool | None = None, spans: Any = None, **kwargs: Any) -> Any:
        """``model.run_with_cache(...)`` with ``saes`` spliced: the cache holds ``{hook}.hook_sae_*``."""
        with self.saes(saes, reset_saes_end, use_error_term, spans):
            return self.run_with_cache(*args, **kwargs)

    def run_with_hooks_with_saes(self, *args: Any, saes: Any = None, reset_saes_end: bool = True,
                                 use_error_term: bool | None = None, spans: Any = None, **kwargs: Any) -> Any:
        """``model.run_with_hooks(...)`` with ``saes`` spliced."""
        with self.saes(saes, reset_saes_end, use_error_term, spans):
            return self.run_with_hooks(*args, **kwargs)
