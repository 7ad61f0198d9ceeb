"""The layers of the package import one way: core -> analysis -> views -> command line; experiments sit outside.

* the core (every module of ``hooked_vlm/`` outside the layers below, and ``converters/``) imports none of
  ``hooked_vlm.analysis``, ``hooked_vlm.viz``, the command-line layer (``hooked_vlm.cli``, ``hooked_vlm.demo``) or
  the repository's ``experiments`` -- at any level, function bodies included (a lazy import is still a dependency);
* the analysis layer does not import ``hooked_vlm.viz`` at module level (a result's ``.show()`` may import its view
  when called: analyses return plain results, views import analyses) and never the command-line layer;
* the views never import the command-line layer; nothing in the package imports ``experiments``.

Every module's imports are read with ``ast`` (``import x``, ``from x import y``, relative ones resolved, and
``importlib.import_module("literal")``), so a violation fails with its file and line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hooked_vlm", "converters")
ANALYSIS, VIZ, CLI = ("hooked_vlm.analysis",), ("hooked_vlm.viz",), ("hooked_vlm.cli", "hooked_vlm.demo")
OUTSIDE = ("experiments",)


@dataclass(frozen=True)
class Import:
    file: str  # relative to the root scanned
    line: int
    target: str  # the absolute module (or module.name) imported
    module_level: bool  # runs when the module is imported (not inside a function body)


def module_name(path: Path, root: Path) -> tuple[str, str]:
    """(the module's dotted name, the package its relative imports resolve against)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def _resolve(package: str, level: int, module: str | None) -> str:
    base = package.split(".")
    if level > 1:
        base = base[: len(base) - level + 1]
    return ".".join(base + ([module] if module else []))


class _Imports(ast.NodeVisitor):
    def __init__(self, file: str, package: str):
        self.file, self.package, self.depth, self.found = file, package, 0, []

    def _add(self, node: ast.AST, target: str) -> None:
        self.found.append(Import(self.file, node.lineno, target, self.depth == 0))

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve(self.package, node.level, node.module) if node.level else node.module
        self._add(node, base)
        for alias in node.names:  # `from hooked_vlm import analysis` imports the submodule
            self._add(node, f"{base}.{alias.name}")

    def visit_Call(self, node: ast.Call) -> None:
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."):
            self._add(node, node.args[0].value)
        self.generic_visit(node)


def imports_in(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, list[Import]]:
    """{module: its imports} for every .py file of ``packages`` under ``root``."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            name, package = module_name(path, root)
            visitor = _Imports(str(path.relative_to(root)), package)
            visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
            out[name] = visitor.found
    return out


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer(module: str) -> str:
    for label, prefixes in (("analysis", ANALYSIS), ("viz", VIZ), ("cli", CLI)):
        if _within(module, prefixes):
            return label
    return "core"


def violations(found: dict[str, list[Import]]) -> list[str]:
    """One line per forbidden import statement: ``file:line: module (layer) imports target (why)``."""
    bad: dict[tuple[str, int], str] = {}
    for module, imports in found.items():
        kind = layer(module)
        for imp in imports:
            why = None
            if _within(imp.target, OUTSIDE):
                why = "the experiments sit outside the package and import it, never the reverse"
            elif kind == "core" and _within(imp.target, ANALYSIS + VIZ + CLI):
                why = "the core imports no layer above it; span selection is hooked_vlm.span_select"
            elif kind == "analysis" and _within(imp.target, CLI):
                why = "analyses never import the command-line layer"
            elif kind == "analysis" and _within(imp.target, VIZ) and imp.module_level:
                why = "analyses import views only inside the function that shows a result"
            elif kind == "viz" and _within(imp.target, CLI):
                why = "views never import the command-line layer"
            if why:  # `from x import a, b`: the statement once, at its first forbidden target
                bad.setdefault((imp.file, imp.line), f"{imp.file}:{imp.line}: {module} ({kind}) imports {imp.target} ({why})")
    return sorted(bad.values())


def test_the_package_imports_one_way():
    found = imports_in(ROOT)
    assert len(found) >= 100 and "hooked_vlm.saes.splice" in found and "hooked_vlm.span_select" in found
    bad = violations(found)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_lazy_public_names_resolve_to_the_core():
    """``hooked_vlm`` and ``hooked_vlm.saes`` import their public names on first use, by a string table."""
    import hooked_vlm
    from hooked_vlm import saes

    for pkg in (hooked_vlm, saes):
        for name, sub in pkg._LAZY.items():
            assert layer(f"{pkg.__name__}.{sub}") == "core", (pkg.__name__, name, sub)


def test_a_wrong_way_import_fails_with_its_file_and_line(tmp_path):
    """The checker itself: a core module importing an analysis in a function body, an analysis importing a view at
    module level and an experiment import are each reported; the allowed directions are not."""
    files = {
        "hooked_vlm/__init__.py": "",
        "hooked_vlm/model.py": "import torch\n\ndef f():\n    from .analysis import span_mask\n",
        "hooked_vlm/saes/__init__.py": "from .. import viz\n",
        "hooked_vlm/analysis/__init__.py": "from ._common import x\n",
        "hooked_vlm/analysis/_common.py": "from ..span_select import span_mask\nfrom ..viz import lens_view\n",
        "hooked_vlm/analysis/lens.py": "def show():\n    from ..viz import lens_view\n",
        "hooked_vlm/viz/__init__.py": "from ..analysis.lens import show\n",
        "hooked_vlm/toy/train.py": "import importlib\nimportlib.import_module('experiments.gate_experiment')\n",
        "hooked_vlm/cli.py": "from hooked_vlm.analysis import logit_lens\nfrom hooked_vlm.viz import write_views\n",
        "converters/__init__.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    bad = violations(imports_in(tmp_path))
    assert [b.split(" (")[0] for b in bad] == [
        "hooked_vlm/analysis/_common.py:2: hooked_vlm.analysis._common",
        "hooked_vlm/model.py:4: hooked_vlm.model",
        "hooked_vlm/saes/__init__.py:1: hooked_vlm.saes",
        "hooked_vlm/toy/train.py:2: hooked_vlm.toy.train",
    ], bad
    assert "imports hooked_vlm.analysis (the core imports no layer above it" in bad[1]
