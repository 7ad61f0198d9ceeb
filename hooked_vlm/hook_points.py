"""HookPoint with the checks a VLM needs.

TransformerLens's :class:`HookPoint` is an identity module whose forward hooks may replace the
activation. Ours adds two things:

* the returned tensor is checked: a hook that returns a tensor of another shape gets an error
  naming the hook point and both shapes (instead of a cryptic failure three modules later);
* ``hook.run`` gives hook functions the state of the forward in progress: the
  :class:`~hooked_vlm.spans.TokenSpans` of the batch and the absolute positions of the queries
  being computed (they differ from ``range(pos)`` while generating with a KV cache);
* a hook that indexes the whole sequence (``act[:, spans.positions("image")]``) and fails in a step that computes
  only the new positions gets an error naming ``hook.query_positions`` and how to select rows instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformer_lens.hook_points import HookPoint as _TLHookPoint

ShapeCheck = Callable[[torch.Tensor, torch.Tensor], bool]


def _same_shape(new: torch.Tensor, old: torch.Tensor) -> bool:
    return tuple(new.shape) == tuple(old.shape)


@dataclass
class RunState:
    """What the forward in progress knows; shared by every hook point of one model."""

    spans: Any = None  # TokenSpans of the whole sequence (prompt + generated so far)
    query_positions: torch.Tensor | None = None  # [q_pos] absolute positions computed now
    extra: dict[str, Any] = field(default_factory=dict)


class HookPoint(_TLHookPoint):
    """An identity module to hook. ``shape_check(new, old)`` validates a hook's return value."""

    def __init__(self, shape_check: ShapeCheck = _same_shape, expected: str = "the same shape as its input"):
        super().__init__()
        self._shape_check = shape_check
        self._expected = expected
        self.run: RunState = RunState()

    @property
    def spans(self) -> Any:
        """Token spans of the forward in progress (see :class:`~hooked_vlm.spans.TokenSpans`)."""
        return self.run.spans

    @property
    def query_positions(self) -> torch.Tensor | None:
        """Absolute positions of the query rows computed in this forward."""
        return self.run.query_positions

    def layer(self) -> int:
        """The block index in the name, as TransformerLens's ``hook.layer()``: ``blocks.3.attn.hook_z`` -> 3, and
        also under a prefix: ``vision.blocks.3.hook_resid_post`` -> 3 (the vision tower's block 3)."""
        found = re.search(r"(?:^|\.)blocks\.(\d+)\.", self.name or "")
        if found is None:
            raise ValueError(f"hook point {self.name!r} is not inside a block (no 'blocks.N.' in its name): it has no layer")
        return int(found.group(1))

    def add_hook(self, hook: Callable, dir: str = "fwd", **kwargs: Any):  # type: ignore[override]
        user_hook = hook
        if dir == "fwd":
            hook = self._checked(hook)
        handle = super().add_hook(hook, dir=dir, **kwargs)
        if handle is None:  # TL 3.x returns nothing: the new handle is first (prepend) or last in its list
            handles = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
            handle = handles[0] if kwargs.get("prepend") else handles[-1]
        handle.user_hook = user_hook  # list_hooks() shows the user's function, not our shape-checking wrapper
        return handle

    def _checked(self, hook: Callable) -> Callable:
        def checked_hook(tensor: torch.Tensor, hook: "HookPoint") -> Any:
            try:
                result = user_hook(tensor, hook=hook)
            except (IndexError, RuntimeError) as err:
                hint = self._partial_step_hint(tensor)
                if hint is None:
                    raise
                kind = IndexError if isinstance(err, IndexError) else RuntimeError
                raise kind(f"hook {_fn_name(user_hook)} on '{self.name}' raised {type(err).__name__}: {err}\n{hint}") from err
            if result is not None:
                if not isinstance(result, torch.Tensor):
                    raise TypeError(
                        f"hook {_fn_name(user_hook)} on '{self.name}' returned {type(result).__name__}; "
                        "a forward hook must return a torch.Tensor or None"
                    )
                if not self._shape_check(result, tensor):
                    raise ValueError(
                        f"hook {_fn_name(user_hook)} on '{self.name}' returned shape {tuple(result.shape)}; "
                        f"expected {self._expected} {tuple(tensor.shape)}. Return the edited activation, "
                        "or None to leave it unchanged."
                    )
            return result

        user_hook = hook
        checked_hook.__name__ = _fn_name(hook)
        return checked_hook


    def _partial_step_hint(self, tensor: torch.Tensor) -> str | None:
        """Why a hook written for a whole forward fails in a step that computes only some positions (generate with a
        KV cache); None when this forward computes the whole sequence."""
        spans, q = self.run.spans, self.run.query_positions
        if spans is None or q is None or len(q) == spans.seq_len or len(q) == 0:
            return None
        return (f"This forward computes positions {int(q[0])}..{int(q[-1])} of {spans.seq_len} only "
                f"(hook.query_positions: a generate step with a KV cache), so the activation "
                f"{tuple(tensor.shape)} holds {len(q)} position(s), not the whole sequence that hook.spans describes. "
                "Select rows with the spans at hook.query_positions, e.g. "
                "rows = hook.spans.mask('image')[:, hook.query_positions] (or hooked_vlm.analysis.query_rows(hook, "
                "'image', act)), or generate with use_kv_cache=False.")


def _fn_name(fn: Callable) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__
