"""jaxtyping annotations are checked at run time (beartype) on a full forward, cache, generate and spans."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys, warnings
    sys.path.insert(0, {root!r})
    warnings.filterwarnings("ignore")
    from jaxtyping import install_import_hook
    with install_import_hook(["hooked_vlm", "converters"], "beartype.beartype"):
        import hooked_vlm, converters
        from hooked_vlm import HookedVLM
        from hooked_vlm.spans import build_spans
    from tests import tiny
    import torch
    folder, hf = tiny.make_llava()
    model = HookedVLM.from_pretrained(str(folder))
    inputs = tiny.llava_batch(hf, [1, 2], [2, 0])
    logits, cache = model.run_with_cache(**inputs)
    assert model.W_U.shape[1] == tiny.VOCAB
    model.generate(**inputs, max_new_tokens=2, return_type="tokens")
    cache.spans.positions("image", 0)
    try:
        build_spans(inputs["input_ids"].float(), None, model.cfg.roles, [])
    except Exception as err:
        assert "Int" in str(err) or "dtype" in str(err), err
    else:
        raise AssertionError("a float input_ids tensor passed the jaxtyping check")
    print("TYPECHECK OK")
    """
)


def test_jaxtyping_annotations_hold_at_run_time():
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(ROOT))], capture_output=True, text=True, timeout=300)
    assert "TYPECHECK OK" in out.stdout, out.stderr[-3000:]
