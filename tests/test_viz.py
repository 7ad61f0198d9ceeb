"""The view documents without a browser: self-contained (no network), what they embed, their size at the
LLaVA-1.5 shape (576 image tokens x 33 layers x top-5), notebook display, the static lens figure, the CLI."""

from __future__ import annotations

import base64
import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from hooked_vlm.analysis.logit_lens import LogitLensResult
from hooked_vlm.config import TokenRoles
from hooked_vlm.spans import ImageLayout, build_spans
from hooked_vlm.toy.data import make_scene, prompt
from hooked_vlm.viz import View, lens_view

LENS_MAX_BYTES = 1_400_000  # 576 x 33 x top-5, 2 targets, 5,000 distinct top tokens, a 336 px noise image: 1.31 MB measured


class WordTokenizer:
    def __init__(self, words: list[str]):
        self.words = words

    def convert_ids_to_tokens(self, ids):
        return self.words[ids] if isinstance(ids, int) else [self.words[i] for i in ids]


def llava_shaped_lens(distinct: int, seed: int = 0) -> LogitLensResult:
    """A lens result of LLaVA-1.5's shape: 576 image tokens (24 x 24) + 20 prompt tokens, 33 layers, top-5, 32k vocab."""
    g = torch.Generator().manual_seed(seed)
    n_text, n_img, L, k, V = 20, 576, 33, 5, 32000
    ids = torch.cat([torch.tensor([1]), torch.full((n_img,), 32000), torch.randint(2, 31999, (n_text - 1,), generator=g)])[None]
    spans = build_spans(ids, None, TokenRoles(image_token_id=32000), [ImageLayout(24, 24)])
    pool = torch.randperm(V, generator=g)[:distinct]
    top_ids = pool[torch.randint(0, distinct, (L, n_img + n_text, k), generator=g)]
    top_probs = torch.rand(L, n_img + n_text, k, generator=g).sort(-1, descending=True).values / k
    words = [f"tok{i}" for i in range(V + 1)]
    return LogitLensResult(layers=list(range(L)), batch_index=torch.zeros(n_img + n_text, dtype=torch.long),
                           positions=torch.arange(n_img + n_text), top_ids=top_ids, top_probs=top_probs,
                           target_ids=torch.tensor([5, 6]), target_probs=torch.rand(L, n_img + n_text, 2, generator=g),
                           target_ranks=torch.randint(0, 100, (L, n_img + n_text, 2), generator=g), spans=spans,
                           tokenizer=WordTokenizer(words), input_ids=ids)


def embedded(view: View) -> dict:
    text = re.search(r'<script type="application/json" id="hv-data">(.*?)</script>', view.html, re.S).group(1)
    return json.loads(text)


def test_lens_document_is_self_contained_and_small_at_llava_shape():
    lens = llava_shaped_lens(distinct=5000)
    image = (np.random.default_rng(0).random((336, 336, 3)) * 255).astype(np.uint8)
    view = lens_view(lens, image)
    html = view.html
    size = len(html.encode())
    assert size <= LENS_MAX_BYTES, size
    assert not re.search(r'(src|href)="(https?:)?//', html) and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    data = embedded(view)
    assert data["image"].startswith("data:image/png;base64,") and data["grid"] == {"rows": 24, "cols": 24}
    # the packed arrays decode to the result: top tokens through the local vocabulary, probabilities to 1/65534
    v = data["vocabs"][0]
    top = np.frombuffer(base64.b64decode(v["top"]), dtype="<u2" if v["top_dtype"] == "u16" else "<i4").reshape(33, 596, 5)
    strings = np.array(data["vocab_strings"])[top]
    assert (strings == np.array([f"tok{i}" for i in range(32001)])[lens.top_ids.numpy()]).all()
    probs = np.frombuffer(base64.b64decode(v["top_prob"]), dtype="<u2").reshape(33, 596, 5) / 65534
    assert abs(probs - lens.top_probs.numpy()).max() <= 0.5 / 65534 + 1e-9
    assert data["cells"][1] == [0, 0] and data["cells"][576] == [23, 23] and data["cells"][0] is None


def test_document_escapes_script_text_and_displays_in_notebooks():
    lens = llava_shaped_lens(distinct=50)
    lens.tokenizer.words[int(lens.top_ids[0, 0, 0])] = "</script><script>alert(1)</script>"
    view = lens_view(lens)
    assert view.html.count("</script>") == 3  # the data block and the two code blocks; the token stays inside JSON
    assert "</script><script>alert(1)</script>" in embedded(view)["vocab_strings"]
    shown = lens._repr_html_()
    assert shown.startswith("<iframe srcdoc=") and "<script" not in shown  # the whole document, escaped, isolated
    with pytest.raises(ValueError, match="same input"):
        lens_view(lens, others=[dataclasses.replace(lens, vocab="image", layers=lens.layers[:3])])
    with pytest.raises(ValueError, match="different vocabulary"):
        lens_view(lens, others=[lens])


@pytest.fixture(scope="module")
def llava():
    from hooked_vlm import HookedVLM

    return HookedVLM.from_pretrained("toy-llava")


def test_static_lens_figure_names_the_token(llava):
    from hooked_vlm.analysis import logit_lens

    scene = make_scene(np.random.default_rng(3), colour="red")
    lens = logit_lens(llava, llava.prepare_inputs(images=scene.pil(), text=prompt("colour")), targets=["red"])
    fig = lens.plot(image=scene.image)
    assert "p('red')" in fig._suptitle.get_text() and "target 0" not in fig._suptitle.get_text()
    panels = [ax for ax in fig.axes if ax.get_title().startswith("layer")]
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(panels) == len(lens.layers) and len(colorbars) == 1 and colorbars[0].get_ylabel() == "p('red')"
    assert all(ax.get_xlabel() == "patch column" for ax in panels) and panels[0].get_ylabel() == "patch row"


def test_analysis_frames_display_as_views(llava):
    import pandas as pd

    from hooked_vlm.analysis import attention_flow
    from hooked_vlm.viz import AttentionFlowFrame

    scene = make_scene(np.random.default_rng(3), colour="red")
    flow = attention_flow(llava, llava.prepare_inputs(images=scene.pil(), text=prompt("colour")), query_span="last")
    assert isinstance(flow, AttentionFlowFrame) and flow._repr_html_().startswith("<iframe")
    derived = flow[flow.layer == 0]
    assert type(derived) is pd.DataFrame  # filters give plain frames (their display is pandas' table)
    rows = embedded(flow.view())["rows"]
    assert [r["share"] for r in rows] == flow["share"].tolist()
    with pytest.raises(ValueError, match="lacks \\['share'\\]"):
        AttentionFlowFrame(flow.drop(columns="share")).view()


def test_cli_view_writes_linked_views(llava, tmp_path, capsys):
    from hooked_vlm.cli import main

    scene = make_scene(np.random.default_rng(4), colour="green")
    scene.pil().save(tmp_path / "scene.png")
    out = tmp_path / "view.html"
    assert main(["view", "--model", "toy-llava", "--image", str(tmp_path / "scene.png"), "--prompt", prompt("colour"),
                 "--target", "green", "--out", str(out), "--device", "cpu"]) == 0
    att = tmp_path / "view_attention.html"
    assert 'href="view_attention.html"' in out.read_text() and 'href="view.html"' in att.read_text()
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and f"wrote {att}" in printed
    lens = json.loads(re.search(r'id="hv-data">(.*?)</script>', out.read_text(), re.S).group(1))
    assert lens["vocab_strings"][lens["vocabs"][0]["targets"][0]] == "green" and len(lens["layers"]) == 3
    with pytest.raises(ValueError, match="an .html file"):
        main(["view", "--model", "toy-llava", "--image", str(tmp_path / "scene.png"), "--prompt", prompt("colour"),
              "--out", str(tmp_path / "view.png"), "--device", "cpu"])
