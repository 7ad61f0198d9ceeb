"""The shipped toy SAE (hooked_vlm/toy/checkpoints/toy-llava-sae, SAELens format): it loads through SAELens,
has colour and shape detectors by the scene generator's ground truth, reconstructs the image tokens, and the
toy still answers with it spliced in. Numbers: docs/toy_models.md ("toy-llava-sae"). Nothing is trained here."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from hooked_vlm.toy.sae_features import HELD_OUT_SEED, SAE_DIR

ROOT = Path(__file__).resolve().parents[1]
N_SCENES = 100  # held-out scenes scored here (docs: 1,000)
# Measured on these 100 scenes (seed 12345): 172 live features of 256; 38 colour detectors (purity >= 0.9; every
# colour has >= 3), 53 shape detectors (52 of them square), 0 position detectors; variance explained 0.929; colour
# accuracy 100.0 plain and 100.0 with the SAE spliced in. The asserts leave a margin below each.
MIN_COLOUR, MIN_SHAPE = 30, 40
MIN_VARIANCE_EXPLAINED = 0.90
MAX_ACCURACY_DROP = 3.0  # colour accuracy points, SAE spliced in at the image tokens vs the plain model


def test_shipped_sae_is_a_small_sae_lens_folder():
    cfg = json.loads((SAE_DIR / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["d_in"] == 128 and cfg["metadata"]["hook_name"] == "hook_embed"
    assert cfg["metadata"]["hooked_vlm_spans"] == ["image"]
    assert sum(f.stat().st_size for f in SAE_DIR.iterdir()) < 1_000_000
    from safetensors import safe_open

    with safe_open(str(SAE_DIR / "sae_weights.safetensors"), "pt") as f:
        assert f.get_slice("W_enc").get_shape() == [128, cfg["d_sae"]]
    # shipped in the wheel: setup.py's package_data globs (relative to hooked_vlm/) cover every file of the folder
    setup_py = (ROOT / "setup.py").read_text()
    patterns = ast.literal_eval(re.search(r'package_data=\{"hooked_vlm": (\[[^\]]*\])', setup_py).group(1))
    package = ROOT / "hooked_vlm"
    packaged = {p for pattern in patterns for p in package.glob(pattern)}
    assert set(SAE_DIR.iterdir()) <= packaged


@pytest.fixture(scope="module")
def measured():
    pytest.importorskip("sae_lens")
    from hooked_vlm import HookedVLM
    from hooked_vlm.saes.train import load_sae
    from hooked_vlm.toy.data import make_scenes
    from experiments.toy_sae_features import (accuracy_with_sae, feature_purity, image_token_activations, purity_counts,
                                              reconstruction)

    model = HookedVLM.from_pretrained("toy-llava")
    sae = load_sae(SAE_DIR)
    scenes = make_scenes(N_SCENES, HELD_OUT_SEED)
    acts, index = image_token_activations(model, scenes, sae.cfg.metadata.hook_name)
    counts = purity_counts(feature_purity(sae, acts, index, scenes))
    return dict(counts=counts, rec=reconstruction(sae, acts),
                acc=accuracy_with_sae(model, sae, scenes, sae.cfg.metadata.hook_name, kinds=("colour",)))


def test_toy_sae_has_colour_and_shape_detectors(measured):
    c = measured["counts"]
    assert c["colour"] >= MIN_COLOUR and len(c["colour_classes"]) == 6  # a detector for every colour
    assert c["shape"] >= MIN_SHAPE


def test_toy_sae_reconstructs_and_keeps_the_answers(measured):
    assert measured["rec"]["variance_explained"] >= MIN_VARIANCE_EXPLAINED
    plain, spliced = measured["acc"]["plain"]["colour"], measured["acc"]["sae"]["colour"]
    assert plain >= 95.0 and abs(plain - spliced) <= MAX_ACCURACY_DROP
