"""Structural checks on spans: every image's tokens sit between the family's markers.

A family sets ``cfg.extra["image_markers"] = (before, after)`` (span names, e.g. ("boi", "eoi") for
Chameleon and Janus, ("image_wrapper", "end_of_frame") for Emu3). A prompt cut inside or right after
an image (e.g. by ``max_length`` truncation) then fails with a clear error instead of silently
lacking its end-of-image token -- the very position the Narrow Gate analyses look at.
"""

from __future__ import annotations

from .spans import TokenSpans


def check_image_markers(spans: TokenSpans, before: str | None, after: str | None,
                        token_names: dict[str, str] | None = None) -> None:
    """Raise unless every image of ``spans`` is directly preceded by span ``before`` and followed by ``after``."""
    names = token_names or {}
    for b in range(spans.batch):
        for i in range(spans.n_images(b)):
            pos = spans.positions(f"image.{i}", b)
            if len(pos) == 0:
                continue
            first, last = int(pos[0]), int(pos[-1])
            if "row_break" in spans and last + 1 < spans.seq_len and bool(spans.mask("row_break")[b, last + 1]):
                last += 1  # the image's final end-of-line token
            for role, at, where in ((before, first - 1, "preceded"), (after, last + 1, "followed")):
                if role is None or role not in spans:  # marker id unknown (e.g. no tokenizer): nothing to check
                    continue
                ok = 0 <= at < spans.seq_len and bool(spans.mask(role)[b, at])
                if not ok:
                    raise ValueError(
                        f"batch item {b}, image {i}: its image tokens (positions {first}..{last}) are not {where} by "
                        f"the {role} token {names.get(role, '')!s}; the image span is truncated or malformed (e.g. cut "
                        "by max_length). Build prompts with the checkpoint's processor and do not truncate inside an image."
                    )
