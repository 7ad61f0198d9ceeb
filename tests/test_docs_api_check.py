"""The API-reference check of `make docs` (.ci/check_docs_api.py) finds what a built site lacks.

The site itself is built and checked by `make docs` (CI); here the check runs on hand-made inventories in the format
mkdocstrings writes (Sphinx v2: four header lines, then zlib), so a check that passed vacuously would fail here.
"""

from __future__ import annotations

import importlib.util
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_docs_api", ROOT / ".ci" / "check_docs_api.py")
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

HEADER = (b"# Sphinx inventory version 2\n# Project: hooked_vlm\n# Version: 0.0.0\n"
          b"# The remainder of this file is compressed using zlib.\n")


def _inventory(path: Path, entries: dict[str, str]) -> Path:
    body = "".join(f"{name} py:function 1 {uri}#{name} -\n" for name, uri in entries.items())
    path.write_bytes(HEADER + zlib.compress(body.encode()))
    return path


def _complete() -> dict[str, str]:
    return {f"{module}.{name}": page for module, page in check.PAGES.items()
            for name in importlib.import_module(module).__all__}


def test_a_complete_inventory_passes(tmp_path, capsys):
    entries = _complete()
    assert len(entries) >= 100  # the four __all__s are really read
    inv = _inventory(tmp_path / "objects.inv", {**entries, "hooked_vlm.HookedVLM.run_with_cache": "api/hooked_vlm/"})
    assert check.read_inventory(inv)["hooked_vlm.analysis.logit_lens"] == "api/analysis/"
    assert check.main([str(inv)]) == 0
    assert "public names" in capsys.readouterr().out


def test_a_missing_or_misplaced_name_fails(tmp_path, capsys):
    entries = _complete()
    del entries["hooked_vlm.analysis.logit_lens"]  # e.g. shadowed by its submodule in griffe's tree
    entries["hooked_vlm.viz.View"] = "api/analysis/"
    assert check.main([str(_inventory(tmp_path / "objects.inv", entries))]) == 1
    err = capsys.readouterr().err
    assert "hooked_vlm.analysis.logit_lens (not in the inventory" in err
    assert "hooked_vlm.viz.View (on 'api/analysis/'" in err


def test_not_an_inventory_is_refused(tmp_path):
    (tmp_path / "x.inv").write_bytes(b"<html>404</html>")
    with pytest.raises(ValueError, match="not a Sphinx v2 inventory"):
        check.read_inventory(tmp_path / "x.inv")
