"""Property-based spans: random prompts (images per item and where, padding side and amount, batch size, stray
marker tokens) for LLaVA, Pixtral, Qwen2-VL, Chameleon and Emu3 tiny models.

For every drawn prompt, against the role and grid cell each token was written with (tests/fuzz_families.py,
which also states the partition of roles):

* every position has exactly one role of the partition, the expected one; ``last`` is the last real position;
* ``image.0``, ``image.1`` ... partition ``image`` of each item, one per image, in order;
* ``spans.grid`` holds each image token's (image, tile, row, col); ``to_grid`` puts every position back on
  its cell (no empty cell) and ``to_str_tokens`` names image tokens ``<img r,c>``;
* ``knockout_hooks(mode="mask")`` blocks exactly the (dst query, src key) pairs asked, in the heads asked, and
  nothing else: the edited ``attn.hook_mask`` equals the causal & padding mask built by hand with those pairs
  removed.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import pytest

from hooked_vlm.analysis.knockout import knockout_hooks
from tests import fuzz_families as ff
from tests.fuzz_families import native_conv  # noqa: F401 (autouse fixture)

# derandomize: the same examples on every run; no shrinking (phases), so a failure is reported in seconds with
# its (unshrunk) inputs instead of minutes of shrinking tiny-model forwards on 2 busy cores.
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
KNOWN = set(ff.PARTITION) | {"last"}


def _expected_mask(r: ff.Rendered, span: str | list[str]) -> torch.Tensor:
    """Bool [batch, pos] of a span name (or a union of names), from the roles the tokens were written with."""
    if isinstance(span, list):
        out = _expected_mask(r, span[0])
        for s in span[1:]:
            out = out | _expected_mask(r, s)
        return out
    rows = []
    for roles, cells in zip(r.roles, r.cells):
        if span == "last":
            last = max(p for p, role in enumerate(roles) if role != "pad")
            rows.append([p == last for p in range(len(roles))])
        elif span.startswith("image."):
            rows.append([c is not None and c[0] == int(span[6:]) for c in cells])
        else:
            rows.append([role == span for role in roles])
    return torch.tensor(rows, dtype=torch.bool)


def _by_hand_allowed(r: ff.Rendered) -> torch.Tensor:
    """Bool [batch, 1, q, k]: causal, and keys that are real (attention_mask 1)."""
    real = r.inputs["attention_mask"].bool()
    n = real.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    return causal[None, None] & real[:, None, None, :]


def _check_roles(spans, r: ff.Rendered) -> None:
    names = set(spans.names)
    assert names <= KNOWN | {f"image.{i}" for i in range(8)}, f"roles outside the stated partition: {names - KNOWN}"
    for b in range(spans.batch):
        for p, want in enumerate(r.roles[b]):
            got = [name for name in ff.PARTITION if name in spans and bool(spans.mask(name)[b, p])]
            assert got == [want], f"item {b} position {p}: roles {got}, expected [{want!r}]"
    assert torch.equal(spans.mask("last"), _expected_mask(r, "last"))


def _check_images_and_grid(spans, r: ff.Rendered) -> None:
    values = torch.arange(spans.seq_len, dtype=torch.float32)
    for b in range(spans.batch):
        assert spans.n_images(b) == r.n_images[b]
        union = torch.zeros(spans.seq_len, dtype=torch.bool)
        for i in range(max(r.n_images)):
            m = spans.mask(f"image.{i}")[b]
            assert torch.equal(m, _expected_mask(r, f"image.{i}")[b]), f"item {b} image.{i}"
            assert not (m & union).any()
            union |= m
        assert torch.equal(union, spans.mask("image")[b])
        want = torch.tensor([c if c is not None else (-1, -1, -1, -1) for c in r.cells[b]], dtype=torch.long)
        assert torch.equal(spans.grid[b].cpu(), want)
        for i, tile in {(c[0], c[1]) for c in r.cells[b] if c is not None}:
            cells = [(p, c) for p, c in enumerate(r.cells[b]) if c is not None and c[:2] == (i, tile)]
            grid = spans.to_grid(values, image=i, batch=b, tile=tile)
            assert grid.shape == (max(c[2] for _, c in cells) + 1, max(c[3] for _, c in cells) + 1)
            assert not grid.isnan().any() and grid.numel() == len(cells)
            for p, (_, _, row, col) in cells:
                assert grid[row, col] == p


def _check_str_tokens(model, r: ff.Rendered, b: int) -> None:
    strs = model.to_str_tokens(r.inputs, batch=b)
    assert len(strs) == len(r.roles[b])
    tiled = {c[0] for c in r.cells[b] if c is not None and c[1] > 0}
    for p, (role, cell) in enumerate(zip(r.roles[b], r.cells[b])):
        if cell is not None:
            img, tile, row, col = cell
            assert strs[p] == (f"<img {tile}:{row},{col}>" if img in tiled else f"<img {row},{col}>"), (p, strs[p])
        elif role == "row_break" and int(r.inputs["input_ids"][b, p]) == model.cfg.roles.image_token_id:
            assert strs[p] == "<img newline>"
        else:
            assert not str(strs[p]).startswith("<img "), (p, strs[p])  # None: an id the tiny tokenizer lacks


MARKERS = {"llava": [], "pixtral": ["row_break", "eoi"], "qwen2": ["boi", "eoi"], "chameleon": ["boi", "eoi"],
           "emu3": ["row_break", "end_of_frame", "eoi", "image_wrapper", "boi"]}


@st.composite
def _span_choice(draw, fam_name: str, r: ff.Rendered):
    """A span name the input has (image.k only where some item holds k + 1 images), or a union of 2-3."""
    names = ["image", "text", "last", *MARKERS[fam_name]] + [f"image.{k}" for k in range(max(r.n_images))]
    one = st.sampled_from(names)
    return draw(st.one_of(one, st.lists(one, min_size=2, max_size=3, unique=True)))


@pytest.mark.parametrize("fam_name", list(ff.FAMILIES))
@SETTINGS
@given(data=st.data())
def test_spans_partition_grid_and_knockout(fam_name, data):
    fam = ff.FAMILIES[fam_name]
    model = ff.load(fam_name)
    plan = data.draw(ff.plans(fam, min_images=1), label="plan")
    r = ff.render(fam, plan)
    src, dst = data.draw(_span_choice(fam_name, r), label="src"), data.draw(_span_choice(fam_name, r), label="dst")
    heads = data.draw(st.one_of(st.none(), st.lists(st.integers(0, model.cfg.n_heads - 1), min_size=1,
                                                    max_size=model.cfg.n_heads, unique=True)), label="heads")
    seen = {}

    def capture(key):
        def fn(mask, hook):
            seen[key], seen["spans"] = mask.clone(), hook.spans
        return fn

    knock = knockout_hooks(model, src=src, dst=dst, layers=[0], heads=heads, mode="mask")
    hooks = [("blocks.0.attn.hook_mask", capture("before")), *knock, ("blocks.0.attn.hook_mask", capture("after"))]
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(**r.inputs, stop_at_layer=1)
    spans = seen["spans"]
    _check_roles(spans, r)
    _check_images_and_grid(spans, r)

    allowed = _by_hand_allowed(r)
    assert torch.equal(seen["before"].cpu(), allowed)
    blocked = _expected_mask(r, dst)[:, None, :, None] & _expected_mask(r, src)[:, None, None, :]
    if heads is not None:
        sel = torch.zeros(model.cfg.n_heads, dtype=torch.bool)
        sel[heads] = True
        blocked = blocked & sel[None, :, None, None]
    want = allowed & ~blocked
    assert torch.equal(seen["after"].cpu(), want.expand_as(seen["after"]))
    assert seen["after"].shape[1] == (1 if heads is None else model.cfg.n_heads)
    _check_str_tokens(model, r, data.draw(st.integers(0, spans.batch - 1), label="str_tokens item"))
