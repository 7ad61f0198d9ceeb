"""The loader's KeyMap walk (``map_checkpoint_tensors``): tie groups, duplicates, transforms, on a toy module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from converters.base import KeyMap
from hooked_vlm.loading import fill_from_safetensors
from hooked_vlm.tensor_mapping import map_checkpoint_tensors


class TwoTieGroups(nn.Module):
    """a.weight is b.weight (one tie group), c.weight is d.weight (another), e is untied."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d, self.e = (nn.Linear(3, 3, bias=False) for _ in range(5))
        self.b.weight = self.a.weight
        self.d.weight = self.c.weight


IDENTITY = KeyMap(rules=[(r"(.+)", r"\1")])


def _save(tmp_path: Path, tensors: dict) -> Path:
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tmp_path


def test_each_tie_group_needs_its_own_tensor(tmp_path):
    model = TwoTieGroups()
    shapes = {"a.weight": (3, 3), "e.weight": (3, 3)}  # the c/d group gets nothing
    m = map_checkpoint_tensors(model, IDENTITY, shapes)
    assert sorted(m.missing) == ["c.weight", "d.weight"] and not m.unused and not m.misshaped
    with pytest.raises(ValueError, match=r"2 parameter\(s\) got no tensor from the checkpoint.*c\.weight, d\.weight"):
        fill_from_safetensors(model, _save(tmp_path, {k: torch.ones(3, 3) for k in shapes}), IDENTITY)


def test_one_member_loads_the_whole_tie_group(tmp_path):
    model = TwoTieGroups()
    tensors = {"b.weight": torch.full((3, 3), 2.0), "c.weight": torch.full((3, 3), 3.0), "e.weight": torch.zeros(3, 3)}
    m = fill_from_safetensors(model, _save(tmp_path, tensors), IDENTITY)
    assert m.missing == [] and model.a.weight.eq(2).all() and model.d.weight.eq(3).all()


def test_two_checkpoint_names_for_one_parameter_are_refused():
    keymap = KeyMap(aliases=[(r"^legacy\.", "")], rules=[(r"(.+)", r"\1")])
    shapes = {"a.weight": (3, 3), "legacy.a.weight": (3, 3), "c.weight": (3, 3), "e.weight": (3, 3)}
    m = map_checkpoint_tensors(TwoTieGroups(), keymap, shapes)
    assert m.duplicates == [("a.weight", ["a.weight", "legacy.a.weight"])]
    with pytest.raises(ValueError, match=r"'a.weight', 'legacy.a.weight' in ckpt all map to a.weight"):
        m.raise_if_bad("ckpt")


def test_shapes_after_a_transform_are_checked_on_meta():
    keymap = KeyMap(rules=[(r"(.+)", r"\1")], transforms=[(r"e\.weight", lambda t: t.reshape(3, 3))])
    ok = map_checkpoint_tensors(TwoTieGroups(), keymap, {"a.weight": (3, 3), "c.weight": (3, 3), "e.weight": (9,)})
    assert ok.ok
    bad = map_checkpoint_tensors(TwoTieGroups(), KeyMap(rules=[(r"(.+)", r"\1")], transforms=[(r"e\.weight", lambda t: t.T)]),
                                 {"a.weight": (3, 3), "c.weight": (3, 3), "e.weight": (3, 4)})
    assert bad.misshaped == [("e.weight", "e.weight", (4, 3), (3, 3), True)]
    with pytest.raises(ValueError, match=r"checkpoint tensor 'e.weight' becomes shape \(4, 3\); e.weight expects \(3, 3\)"):
        bad.raise_if_bad("ckpt")


def test_tie_group_given_equal_tensors_stays_tied(tmp_path):
    model = TwoTieGroups()
    same = torch.full((3, 3), 5.0)
    tensors = {"a.weight": same, "b.weight": same.clone(), "c.weight": torch.ones(3, 3), "e.weight": torch.zeros(3, 3)}
    m = fill_from_safetensors(model, _save(tmp_path, tensors), IDENTITY)
    assert m.tied_twice == [{"a.weight": "a.weight", "b.weight": "b.weight"}]
    assert model.a.weight is model.b.weight and model.a.weight.eq(5).all()


def test_tie_group_given_different_tensors_is_untied_like_hf(tmp_path):
    """HF's from_pretrained does not tie when the checkpoint holds different values for both names (modeling_utils
    tie_weights); loading both into one shared tensor would silently keep whichever came last."""
    model = TwoTieGroups()
    tensors = {"a.weight": torch.full((3, 3), 1.0), "b.weight": torch.full((3, 3), 2.0), "c.weight": torch.ones(3, 3),
               "e.weight": torch.zeros(3, 3)}
    with pytest.warns(UserWarning, match=r"ties a.weight, b.weight but the checkpoint holds different tensors"):
        fill_from_safetensors(model, _save(tmp_path, tensors), IDENTITY)
    assert model.a.weight is not model.b.weight
    assert model.a.weight.eq(1).all() and model.b.weight.eq(2).all()
    assert model.c.weight is model.d.weight  # the other group is untouched
