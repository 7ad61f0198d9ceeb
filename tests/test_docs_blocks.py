"""Docs that cannot rot: every fenced ```python block of README.md and docs/**/*.md runs, on the shipped toys.

Each markdown file's blocks run in order in ONE namespace (a later block may use what an earlier one defined, as a
reader would run them), from a temporary working directory (files a block writes land there), offline. One test per
block, named ``<file>:<line>``; a block runs once even when tests are selected or ordered otherwise (a test runs the
blocks before it first).

Markers (an HTML comment on the last non-blank line before the fence; invisible in the rendered page):

* ``<!-- docs-test: skip (why) -->``: not run; the test is skipped with ``why`` (e.g. needs a GPU or a hub checkpoint).
  Later blocks of the file must not depend on it.
* ``<!-- docs-test: requires MODULE -->``: run only where MODULE imports (e.g. ``sae_lens``, in the min venv);
  skipped elsewhere with that reason.

``bash`` / ``text`` / indented blocks are not run. ``HookedVLM.from_pretrained`` of a shipped toy (``toy-llava``,
``toy-chameleon``, ...) returns one cached model per toy across all blocks (hooks and SAEs removed before it is handed
out), so the whole harness takes seconds beyond the blocks' own work.
"""

from __future__ import annotations

import os
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*docs-test:\s*(skip|requires)\s*(.*?)\s*-->$")


@dataclass
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None = None  # the reason, for a skip marker
    requires: str | None = None  # a module name, for a requires marker

    @property
    def id(self) -> str:
        name = self.file.relative_to(ROOT) if self.file.is_relative_to(ROOT) else self.file.name
        return f"{name}:{self.line}"


def extract(path: Path) -> list[Block]:
    """The fenced python blocks of one markdown file, with their markers."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        lang, start = m.group(1), i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if lang not in ("python", "py"):
            continue
        prev = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(prev)
        block = Block(path, start + 1, "\n".join(body) + "\n")
        if marker and marker.group(1) == "skip":
            reason = marker.group(2).strip()
            block.skip = reason[1:-1] if reason.startswith("(") and reason.endswith(")") else reason
            if not block.skip:
                raise ValueError(f"{block.id}: a docs-test skip marker needs a reason: <!-- docs-test: skip (why) -->")
        elif marker:
            block.requires = marker.group(2).strip()
        elif prev.startswith("<!--") and "docs-test" in prev:
            raise ValueError(f"{block.id}: unreadable marker {prev!r}; use <!-- docs-test: skip (why) --> or "
                             "<!-- docs-test: requires MODULE -->")
        blocks.append(block)
    return blocks


BLOCKS = [b for f in FILES for b in extract(f)]


class FileRun:
    """The shared namespace of one file and the outcome of each block run so far."""

    def __init__(self, blocks: list[Block], workdir: Path):
        self.blocks, self.workdir = blocks, workdir
        self.namespace: dict = {"__name__": "__docs__"}
        self.outcomes: list[tuple[str, str]] = []  # ("ok" | "skip" | "error", detail) per block run

    def run_through(self, index: int) -> tuple[str, str]:
        while len(self.outcomes) <= index:
            self.outcomes.append(self._run(self.blocks[len(self.outcomes)]))
        return self.outcomes[index]

    def _run(self, block: Block) -> tuple[str, str]:
        if block.skip:
            return "skip", f"docs-test marker: {block.skip}"
        if block.requires:
            import importlib.util

            if importlib.util.find_spec(block.requires) is None:
                return "skip", f"docs-test marker: requires {block.requires} (not installed here)"
        failed_before = [i for i, (kind, _) in enumerate(self.outcomes) if kind == "error"]
        if failed_before:
            return "error", f"an earlier block of {block.file.name} failed (line {self.blocks[failed_before[0]].line})"
        cwd = os.getcwd()
        os.chdir(self.workdir)
        try:
            exec(compile(block.code, block.id, "exec"), self.namespace)
        except BaseException:  # noqa: BLE001 -- reported as this block's failure, with its traceback
            return "error", traceback.format_exc()
        finally:
            os.chdir(cwd)
            import matplotlib.pyplot as plt

            plt.close("all")
        return "ok", ""


_RUNS: dict[Path, FileRun] = {}
_TOYS: dict = {}


@pytest.fixture
def toy_cache(monkeypatch):
    """HookedVLM.from_pretrained of a shipped toy: one cached model per (toy, arguments)."""
    from hooked_vlm import HookedVLM
    from hooked_vlm.loading import load_pretrained

    toys = {"toy-llava", "toy-chameleon", "toy-chameleon-gen"}

    def from_pretrained(name_or_path, *args, **kwargs):
        if str(name_or_path) not in toys:
            return load_pretrained(HookedVLM, name_or_path, *args, **kwargs)
        key = (str(name_or_path), args, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
        if key not in _TOYS:
            _TOYS[key] = load_pretrained(HookedVLM, name_or_path, *args, **kwargs)
        model = _TOYS[key]
        model.reset_hooks(including_permanent=True)
        model.reset_saes()
        return model

    monkeypatch.setattr(HookedVLM, "from_pretrained", staticmethod(from_pretrained))
    monkeypatch.setenv("MPLBACKEND", "Agg")


def test_blocks_found():
    """The harness sees the docs' blocks (a broken extractor would pass every file vacuously)."""
    names = {b.file.name for b in BLOCKS}
    assert {"README.md", "getting_started.md"} <= names and len(BLOCKS) >= 10
    readme = extract(ROOT / "README.md")
    assert readme and readme[0].code.lstrip().startswith(("import", "from"))


def test_readme_is_short_and_every_block_runs():
    """The README is the front door (what it is, the two commands, install, quick start, the tables, links): at most
    200 lines, and none of its python blocks is skipped (the rest of the text lives in docs/)."""
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 200
    blocks = extract(readme)
    assert blocks and [b.id for b in blocks if b.skip or b.requires] == []


def test_markers_are_read(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text\n\n<!-- docs-test: skip (needs a GPU) -->\n```python\nraise SystemExit\n```\n\n"
                   "<!-- docs-test: requires no_such_module_xyz -->\n\n```python\nx = 1\n```\n\n```bash\nls\n```\n"
                   "```python\ny = x\n```\n")
    skip, req, plain = extract(doc)
    assert (skip.skip, skip.line) == ("needs a GPU", 4) and req.requires == "no_such_module_xyz" and plain.code == "y = x\n"
    run = FileRun([skip, req, plain], tmp_path)
    assert [run.run_through(i)[0] for i in range(3)] == ["skip", "skip", "error"]  # y = x: x was never defined
    assert "NameError" in run.outcomes[2][1]
    doc.write_text("<!-- docs-test: skip -->\n```python\npass\n```\n")
    with pytest.raises(ValueError, match="needs a reason"):
        extract(doc)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id + (" [skip marker]" if b.skip else "") for b in BLOCKS])
def test_block_runs(block, toy_cache, tmp_path_factory):
    same_file = [b for b in BLOCKS if b.file == block.file]
    if block.file not in _RUNS:
        _RUNS[block.file] = FileRun(same_file, tmp_path_factory.mktemp(block.file.stem))
    kind, detail = _RUNS[block.file].run_through(same_file.index(block))
    if kind == "skip":
        pytest.skip(detail)
    if kind == "error":
        pytest.fail(f"{block.id} failed:\n{block.code}\n{detail}", pytrace=False)
