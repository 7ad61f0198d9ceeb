"""Random prompts for the span fuzz tests: each token is written together with the role and grid cell it must get.

A prompt is built from a hypothesis-drawn *plan* (batch size, per item: text runs, images and stray marker
tokens, padding side and amount). The expected role of every position comes from the plan, never from the
library: :func:`render` returns the model inputs and, per batch item, the role and (image, tile, row, col) of
every position.

Partition of the positions (what the tests assert; the roles of ``hooked_vlm.spans.build_spans``):

* ``pad``        positions with attention_mask 0 (whatever their token id);
* ``image``      image-content tokens (one grid cell each), split per image into ``image.0``, ``image.1`` ...;
* markers        ``boi``, ``eoi``, ``row_break`` and the family's extra roles (Emu3 ``image_wrapper``,
                 ``end_of_frame``), by token id wherever they stand (stray ones in the text too); Emu3's
                 end-of-line placeholders are ``row_break``, not ``image``;
* ``text``       every other real position (Emu3's "rows*cols" size header included).

Every position has exactly one of these roles. ``last`` (the last real position of an item) overlaps by design.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import strategies as st

from tests import tiny
from tests import tiny_native as tn
from tests import tiny_next_pixtral as tnp
from tests import tiny_qwen_idefics as tq

PARTITION = ("pad", "image", "text", "boi", "eoi", "row_break", "image_wrapper", "end_of_frame")

Tok = tuple[int, str, "tuple[int, int, int, int] | None"]  # (token id, role, (image, tile, row, col) or None)


@dataclass
class Family:
    name: str
    words: list[int]  # ordinary text token ids (PAD's id included: real positions holding it are text)
    strays: dict[int, str]  # marker token ids that may also appear in the text, with their role
    image: st.SearchStrategy  # one image's spec
    closing_marker: str | None = None  # the role the library requires right after each image (image_markers)

    def tokens(self, spec: Any, i: int) -> list[Tok]:
        return RENDER[self.name](self, spec, i)

    def pixels(self, specs: list[Any], g: torch.Generator) -> dict:
        return PIXELS[self.name](specs, g) if specs else {}


def _grid_run(i: int, rows: int, cols: int, tile: int = 0) -> list[Tok]:
    return [(-1, "image", (i, tile, r, c)) for r in range(rows) for c in range(cols)]


def _with_id(run: list[Tok], tid: int) -> list[Tok]:
    return [(tid, role, cell) for _, role, cell in run]


# ------------------------------------------------------------------ per-family token runs of one image
def _llava(fam: Family, spec: None, i: int) -> list[Tok]:
    return _with_id(_grid_run(i, 4, 4), tiny.IMAGE_TOKEN)  # 8 x 8 pixels, patch 2, class token dropped


def _pixtral(fam: Family, spec: tuple[int, int], i: int) -> list[Tok]:
    rows, cols = spec[0] // 2, spec[1] // 2
    out: list[Tok] = []
    for r in range(rows):
        out += [(tiny.IMAGE_TOKEN, "image", (i, 0, r, c)) for c in range(cols)]
        out.append((tnp.IMG_BREAK, "row_break", None) if r < rows - 1 else (tnp.IMG_END, "eoi", None))
    return out


def _qwen(fam: Family, spec: tuple[int, int, int], i: int) -> list[Tok]:
    t, h, w = spec
    run = [(tq.IMAGE, "image", (i, f, r, c)) for f in range(t) for r in range(h // 2) for c in range(w // 2)]
    return [(tq.VSTART, "boi", None), *run, (tq.VEND, "eoi", None)]


def _chameleon(fam: Family, spec: None, i: int) -> list[Tok]:
    vm = tn.chameleon_vocab()
    return [(vm["<racm3:break>"], "boi", None), *_with_id(_grid_run(i, 4, 4), vm["<image>"]), (vm["<eoss>"], "eoi", None)]


def _emu3(fam: Family, spec: tuple[int, int], i: int) -> list[Tok]:
    vm = tn.emu3_vocab()
    rows, cols = spec[0] // 8, spec[1] // 8
    out: list[Tok] = [(vm["<|image start|>"], "boi", None), (vm[str(rows)], "text", None), (vm["*"], "text", None),
                      (vm[str(cols)], "text", None), (vm["<|image token|>"], "image_wrapper", None)]
    for r in range(rows):
        out += [(vm["<image>"], "image", (i, 0, r, c)) for c in range(cols)] + [(vm["<image>"], "row_break", None)]
    return out + [(vm["<|extra_201|>"], "end_of_frame", None), (vm["<|image end|>"], "eoi", None)]


RENDER = {"llava": _llava, "pixtral": _pixtral, "qwen2": _qwen, "chameleon": _chameleon, "emu3": _emu3}


# ------------------------------------------------------------------ per-family pixel inputs of the batch's images
def _square(size: int):
    return lambda specs, g: {"pixel_values": torch.randn(len(specs), 3, size, size, generator=g)}


def _padded(specs: list[tuple[int, int]], g: torch.Generator) -> dict:
    h, w = max(s[0] for s in specs), max(s[1] for s in specs)
    px = torch.zeros(len(specs), 3, h, w)
    for k, (hi, wi) in enumerate(specs):
        px[k, :, :hi, :wi] = torch.randn(3, hi, wi, generator=g)
    return {"pixel_values": px, "image_sizes": torch.tensor(specs)}


def _qwen_pixels(specs: list[tuple[int, int, int]], g: torch.Generator) -> dict:
    n = sum(t * h * w for t, h, w in specs)
    return {"pixel_values": torch.randn(n, 3 * 2 * 2 * 2, generator=g), "image_grid_thw": torch.tensor(specs)}


PIXELS = {"llava": _square(8), "pixtral": _padded, "qwen2": _qwen_pixels, "chameleon": _square(8), "emu3": _padded}

_even = st.sampled_from([2, 4, 6, 8, 10, 12, 14, 16])
FAMILIES = {
    "llava": Family("llava", list(range(3, 90)) + [tiny.PAD], {}, st.none()),
    "pixtral": Family("pixtral", list(range(3, 90)) + [tiny.PAD], {tnp.IMG_BREAK: "row_break", tnp.IMG_END: "eoi"},
                      st.tuples(_even, _even)),
    "qwen2": Family("qwen2", list(range(3, 90)) + [tiny.PAD], {tq.VSTART: "boi", tq.VEND: "eoi"},
                    st.tuples(st.sampled_from([1, 1, 2]), st.sampled_from([2, 4, 6]), st.sampled_from([2, 4, 6]))),
    "chameleon": Family("chameleon", list(range(8, 8 + tn.N_WORDS)) + [tn.PAD],
                        {tn.chameleon_vocab()["<racm3:break>"]: "boi", tn.chameleon_vocab()["<eoss>"]: "eoi"},
                        st.none(), closing_marker="eoi"),
    "emu3": Family("emu3", list(range(tn.emu3_vocab()["w0"], tn.emu3_vocab()["w0"] + tn.N_WORDS)) + [tn.PAD],
                   {tn.emu3_vocab()["<|image start|>"]: "boi", tn.emu3_vocab()["<|image end|>"]: "eoi"},
                   st.tuples(st.sampled_from([8, 16]), st.sampled_from([8, 16])), closing_marker="end_of_frame"),
}


@pytest.fixture(autouse=True, scope="module")
def native_conv():
    """oneDNN convolutions of the tiny VQ encoders cost ~30 ms each on 2 busy cores, the native ones ~0.1 ms."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = before


@functools.lru_cache(maxsize=None)
def load(name: str) -> Any:
    """The family's tiny HookedVLM (built once per process), with a processor where spans or str tokens need one."""
    from hooked_vlm import HookedVLM

    if name == "llava":
        folder, _ = tiny.make_llava()
        tiny.save_llava_processor(folder)
        return HookedVLM.from_pretrained(str(folder))
    if name == "pixtral":  # [IMG_BREAK] / [IMG_END] ids come from the processor's tokenizer
        folder, _ = tnp.make_pixtral_llava()
        return HookedVLM.from_pretrained(str(folder), processor=tnp.pixtral_processor())
    if name == "qwen2":
        folder, _ = tq.make_qwen("2")
        return HookedVLM.from_pretrained(str(folder), processor=tiny.word_tokenizer())
    if name == "chameleon":
        folder, _ = tn.make_chameleon()
        return HookedVLM.from_pretrained(str(folder), processor=tn.chameleon_processor())
    folder, _ = tn.make_emu3()
    return HookedVLM.from_pretrained(str(folder), processor=tn.emu3_processor())


# ------------------------------------------------------------------ plans
@dataclass
class Plan:
    items: list[list[Any]]  # per batch item: segments, each ("text", [ids]) or ("image", spec)
    pads: list[int]
    right: bool
    seed: int


@st.composite
def plans(draw: Any, fam: Family, max_batch: int = 3, max_images: int = 3, min_images: int = 0) -> Plan:
    """Batch of 1..max_batch items; each: BOS, then interleaved text runs (with stray markers) and images."""
    batch = draw(st.integers(1, max_batch))
    text_tok = st.sampled_from(fam.words + list(fam.strays)) if fam.strays else st.sampled_from(fam.words)
    items = []
    for _ in range(batch):
        n_img = draw(st.integers(0, max_images))
        segs: list[Any] = [("text", [tiny.BOS] + draw(st.lists(text_tok, max_size=3)))]
        for _ in range(n_img):
            segs.append(("image", draw(fam.image)))
            segs.append(("text", draw(st.lists(text_tok, max_size=3))))
        items.append(segs)
    if min_images and sum(s[0] == "image" for segs in items for s in segs) < min_images:
        items[0] += [("image", draw(fam.image)), ("text", draw(st.lists(text_tok, min_size=1, max_size=2)))]
    pads = draw(st.lists(st.integers(0, 3), min_size=batch, max_size=batch))
    return Plan(items, pads, draw(st.booleans()), draw(st.integers(0, 2**16)))


def item_tokens(fam: Family, segs: list[Any]) -> tuple[list[Tok], list[Any]]:
    """The tokens of one batch item (image indices count within the item) and its image specs."""
    toks: list[Tok] = []
    specs = []
    for kind, val in segs:
        if kind == "text":
            toks += [(t, fam.strays.get(t, "text"), None) for t in val]
        else:
            toks += fam.tokens(val, len(specs))
            specs.append(val)
    return toks, specs


@dataclass
class Rendered:
    inputs: dict
    roles: list[list[str]]  # [batch][pos]
    cells: list[list[Any]]  # [batch][pos] (image, tile, row, col) or None
    n_images: list[int]


def render(fam: Family, plan: Plan, rows: list[list[Tok]] | None = None, specs: list[Any] | None = None) -> Rendered:
    """Pad the items' tokens into one batch; ``rows`` / ``specs`` override the plan's (for malformed inputs)."""
    if rows is None:
        built = [item_tokens(fam, segs) for segs in plan.items]
        rows = [r for r, _ in built]
        specs = [s for _, item in built for s in item]
    length = max(len(r) + p for r, p in zip(rows, plan.pads))
    ids = torch.full((len(rows), length), tiny.PAD)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    roles, cells, n_images = [], [], []
    for b, row in enumerate(rows):
        start = 0 if plan.right else length - len(row)
        ids[b, start:start + len(row)] = torch.tensor([t for t, _, _ in row], dtype=torch.long)
        mask[b, start:start + len(row)] = 1
        roles.append(["pad"] * start + [r for _, r, _ in row] + ["pad"] * (length - start - len(row)))
        cells.append([None] * start + [c for _, _, c in row] + [None] * (length - start - len(row)))
        n_images.append(len({c[0] for _, _, c in row if c is not None}))
    inputs = {"input_ids": ids, "attention_mask": mask}
    inputs.update(fam.pixels(list(specs or []), torch.Generator().manual_seed(plan.seed)))
    if fam.name == "qwen2":
        inputs["mm_token_type_ids"] = (ids == tq.IMAGE).long()
    return Rendered(inputs, roles, cells, n_images)
