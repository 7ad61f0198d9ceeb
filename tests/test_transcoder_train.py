"""Training skip transcoders on (MLP input, MLP output) pairs with SAELens's trainer (needs sae-lens: the venv with
transformer-lens 3.9), and the shipped toy-llava-transcoders."""

from __future__ import annotations

import pytest
import torch

from tests import tiny

pytest.importorskip("sae_lens")

from hooked_vlm.analysis.graph import attribution_graph, replacement_logits  # noqa: E402
from hooked_vlm.saes import load_sae  # noqa: E402
from hooked_vlm.saes.transcoder_train import VLMPairStore, train_transcoder  # noqa: E402

IN, OUT = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


def dataset(b, n: int = 6) -> list[dict]:
    inputs = b.unpadded
    return [{k: v[i % 2: i % 2 + 1] for k, v in inputs.items()} for i in range(n)]


def test_pair_rows_are_the_input_and_output_at_the_same_positions():
    b = tiny.llava()
    data = dataset(b, 2)
    store = VLMPairStore(b.model, data, IN, OUT, "all", progress=False, shuffle=False, n_epochs=1,
                         train_batch_size=8)
    chunk = store.collect()
    assert chunk.acts.shape[1] == 2 * b.model.cfg.d_model and store.d_in == store.d_out == b.model.cfg.d_model
    _, cache = b.model.run_with_cache(**data[0], names_filter=[IN, OUT])
    rows = torch.as_tensor(chunk.index["item"]) == 0
    pos = torch.as_tensor(chunk.index["position"])[rows]
    assert (chunk.acts[rows, :32] - cache[IN][0, pos]).abs().max() <= 1e-6
    assert (chunk.acts[rows, 32:] - cache[OUT][0, pos]).abs().max() <= 1e-6
    assert sorted(pos.tolist()) == list(range(data[0]["input_ids"].shape[1]))


def test_train_a_skip_transcoder_and_use_it_in_a_graph(tmp_path):
    b = tiny.llava()
    data = dataset(b)
    store = VLMPairStore(b.model, data, IN, OUT, "all", progress=False, cache_in_memory=True, train_batch_size=32)
    tc, trainer = train_transcoder(store, d_sae=64, total_training_samples=32 * 300, l1_coefficient=0.01, lr=3e-3,
                                   out=tmp_path / "tc")
    assert trainer.n_training_steps == 300
    loaded = load_sae(tmp_path / "tc")  # SAELens reads it back: a SkipTranscoder with our hooks
    assert type(loaded).__name__ == "SkipTranscoder"
    assert (loaded.cfg.metadata.hook_name, loaded.cfg.metadata.hook_name_out) == (IN, OUT)
    x = torch.randn(7, 32)
    assert (loaded(x) - tc(x)).abs().max() <= 1e-6
    # it learned the MLP: fraction of variance unexplained on the training rows
    rows = VLMPairStore(b.model, data, IN, OUT, "all", progress=False, shuffle=False, n_epochs=1,
                        train_batch_size=64).collect().acts
    x, y = rows[:, :32], rows[:, 32:]
    with torch.no_grad():
        assert float((loaded(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()) <= 0.5
    # a graph with a copy of it at every layer
    others = [load_sae(tmp_path / "tc") for _ in range(3)]
    for layer, sae in enumerate(others):
        sae.cfg.metadata.hook_name = f"blocks.{layer}.ln2.hook_normalized"
        sae.cfg.metadata.hook_name_out = f"blocks.{layer}.hook_mlp_out"
    inputs = {k: v[:1] for k, v in b.unpadded.items()}
    with torch.no_grad():
        want = b.model(**inputs)[0]
    assert (replacement_logits(b.model, inputs, others) - want).abs().max() <= 1e-5
    g = attribution_graph(b.model, inputs, others, max_feature_nodes=20, batch_size=32)
    assert g.n_features == 20


def test_shipped_toy_transcoders_replace_the_toy_exactly():
    from hooked_vlm import HookedVLM
    from hooked_vlm.toy import transcoders as toy_tc
    from hooked_vlm.toy.data import make_scenes
    from hooked_vlm.toy.tasks import ToyEncoder

    model = HookedVLM.from_pretrained("toy-llava")
    saes = toy_tc.load()
    assert [type(s).__name__ for s in saes] == ["SkipTranscoder"] * model.cfg.n_layers
    enc = ToyEncoder(model.processor)
    length = enc.first_answer_position("colour") + 1
    batch = enc.batch(make_scenes(1, seed=777), ("colour",))
    inputs = dict(input_ids=batch["input_ids"][:, :length], attention_mask=batch["attention_mask"][:, :length],
                  pixel_values=batch["pixel_values"])
    with torch.no_grad():
        want = model(**inputs)[0]
    assert (replacement_logits(model, inputs, saes) - want).abs().max() <= 1e-5
    # they explain the MLPs on held-out scenes (measured: FVU 0.08 and 0.04 on 20 scenes, L0 13 and 16)
    from hooked_vlm.toy.data import prompt

    data = [(s.pil(), prompt("colour")) for s in make_scenes(10, seed=12345)]
    for layer, sae in enumerate(saes):
        rows = VLMPairStore(model, data, f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out", "all",
                            progress=False, shuffle=False, n_epochs=1, train_batch_size=4096).collect().acts
        x, y = rows[:, :128], rows[:, 128:]
        with torch.no_grad():
            fvu = float((sae(x) - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
            l0 = float((sae.encode(x) > 0).float().sum(-1).mean())
        assert fvu <= 0.15 and l0 <= 30, (layer, fvu, l0)


def test_cli_trains_a_transcoder(tmp_path):
    from hooked_vlm.cli import main

    built = tiny.llava()
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        tiny.pil_image(i, size=8).save(folder / f"im{i}.png")
    args = ["train-sae", "--model", str(built.folder), "--hook", IN, "--hook-out", OUT, "--images", str(folder),
            "--prompt", "USER: <image> what is this ? ASSISTANT:", "--model-batch", "2", "--device", "cpu",
            "--d-sae", "24", "--samples", "96", "--batch", "16", "--buffer", "32", "--l1", "0.1"]
    assert main([*args, "--out", str(tmp_path / "tc")]) == 0
    tc = load_sae(tmp_path / "tc")
    assert type(tc).__name__ == "SkipTranscoder" and tc.cfg.d_sae == 24
    assert (tc.cfg.metadata.hook_name, tc.cfg.metadata.hook_name_out) == (IN, OUT)
    record = (tmp_path / "tc" / "hooked_vlm_training.json").read_text()
    assert '"steps": 6' in record and '"all"' in record
    with pytest.raises(SystemExit, match="drop --architecture"):
        main([*args, "--architecture", "topk", "--out", str(tmp_path / "x")])


def test_toy_graph_puts_the_colour_on_the_objects_patches():
    """What docs/attribution_graphs.md reports on 100 scenes, on 2: the object's patches hold most of the image
    patches' influence on logit(answer) - logit(runner-up), far above their share of the image; the frozen
    replacement's answer after scaling the top feature is what the graph predicts."""
    from experiments import toy_transcoders

    s = toy_transcoders.measure(n_scenes=2, scale=-1.0, max_feature_nodes=128)["summary"]
    assert s["accuracy"] == 1.0
    assert s["object_share"] >= 0.8 and s["object_share_above_area"] == 1.0 and s["object_area"] <= 0.3
    assert s["frozen_matches_prediction"] == 1.0
