"""Short ``repr`` for result objects: what a printed result shows instead of its tensors.

``print(lens)`` in a notebook used to dump every tensor of a dataclass (thousands of numbers); a result class sets
``__repr__ = summary_repr`` and prints one line per field kind: tensors as ``Tensor[36, 5] float32``, long lists as
``list[120]``, DataFrames as ``DataFrame[rows x cols]``, spans as :meth:`TokenSpans.__repr__`, other objects (a
tokenizer, an image) by their type.
"""

from __future__ import annotations

import dataclasses
from typing import Any

MAX_ITEMS = 6  # sequences up to this long are shown in full (when their items are short)
MAX_CHARS = 60


def short(value: Any) -> str:
    """One short description of ``value``."""
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):  # torch / numpy arrays
        kind = type(value).__name__
        return f"{kind}[{', '.join(str(int(s)) for s in shape)}] {str(value.dtype).replace('torch.', '')}"
    if shape is not None and hasattr(value, "columns"):  # a pandas DataFrame
        return f"{type(value).__name__}[{shape[0]} rows x {shape[1]} columns]"
    if isinstance(value, (list, tuple)):
        inner = [short(v) for v in value[: MAX_ITEMS + 1]]
        text = repr(list(value)) if isinstance(value, list) else repr(tuple(value))
        if len(value) <= MAX_ITEMS and len(text) <= MAX_CHARS:
            return text
        return f"{type(value).__name__}[{len(value)}]" + (f" of {inner[0].split('[')[0]}" if inner else "")
    if isinstance(value, dict):
        keys = list(value)
        shown = ", ".join(repr(k) for k in keys[:MAX_ITEMS])
        return f"dict[{len(keys)}: {shown}{', ...' if len(keys) > MAX_ITEMS else ''}]"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= MAX_CHARS else repr(value[: MAX_CHARS - 3] + "...")
    if type(value).__repr__ is summary_repr or type(value).__name__ == "TokenSpans":
        return repr(value)
    return f"<{type(value).__name__}>"


def summary_repr(self: Any) -> str:
    """``ClassName(field=short(value), ...)`` over the dataclass fields (``__repr__`` of result classes)."""
    fields = [f.name for f in dataclasses.fields(self) if f.repr]
    return f"{type(self).__name__}(" + ", ".join(f"{name}={short(getattr(self, name))}" for name in fields) + ")"
