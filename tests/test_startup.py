"""Start-up stays light: ``import hooked_vlm`` and ``hooked-vlm --help`` / ``--version`` load no heavy library.

Not a timed test (the numbers are in benchmarks/bench_startup.py and benchmarks/RESULTS.md): each check runs a fresh
interpreter and looks at ``sys.modules``, which is what the time is made of (torch ~1.2 s, transformers' model code
~2-3 s, transformer_lens ~2-3 s on the project's machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "transformer_lens", "numpy", "PIL", "sae_lens", "pandas", "matplotlib")


def loaded_after(code: str) -> list[str]:
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("code", [
    "import hooked_vlm",
    "import hooked_vlm; hooked_vlm.__version__",
    "import hooked_vlm.saes.train_cli",
    "from hooked_vlm.cli import build_parser; build_parser()",
    "from hooked_vlm.cli import main\ntry:\n    main(['--version'])\nexcept SystemExit:\n    pass",
    "from hooked_vlm.cli import main\ntry:\n    main(['lens', '--help'])\nexcept SystemExit:\n    pass",
], ids=["import", "version-attr", "train-sae-parser", "build_parser", "--version", "lens --help"])
def test_no_heavy_import(code):
    heavy = sorted(set(loaded_after(code)) & set(HEAVY))
    assert heavy == [], f"{code!r} imported {heavy}"


def test_lazy_names_resolve():
    import hooked_vlm

    for name in hooked_vlm.__all__:
        assert getattr(hooked_vlm, name) is not None
    assert "HookedVLM" in dir(hooked_vlm)
    with pytest.raises(AttributeError, match="no attribute 'HookedVLN'"):
        hooked_vlm.HookedVLN  # noqa: B018
    from hooked_vlm import saes

    assert callable(saes.load_sae) and "SAEMixin" in dir(saes)
