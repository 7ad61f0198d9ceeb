"""Transcoder files and graph files: circuit-tracer's single-layer and cross-layer transcoder files, Gemma Scope 2's
layout and SAELens's own folders give the same graph as the same weights in memory; ``to_json`` follows
circuit-tracer's frontend schema. Fixtures of formats another library writes are made with that library (SAELens,
in the venv that has it); circuit-tracer cannot be installed beside transformers 5, and Gemma Scope 2 is Google's
layout with no writer: their fixtures are written here key by key as circuit-tracer's ``to_safetensors`` and
SAELens's ``gemma_3`` loader read them."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from pydantic import BaseModel
from safetensors.torch import save_file

from hooked_vlm.analysis.graph import TranscoderSet, attribution_graph
from tests import tiny_transcoders as tt
from tests.test_attribution_graph import gemma3_case, llava_case

LN2, MLP_OUT = "blocks.{layer}.ln2.hook_normalized", "blocks.{layer}.hook_mlp_out"


def same_graph(a, b, tol: float = 1e-6) -> None:
    assert a.adjacency.shape == b.adjacency.shape
    assert torch.equal(a.features, b.features)
    assert (a.adjacency - b.adjacency).abs().max() <= tol
    assert (a.feature_bias - b.feature_bias).abs().max() <= tol


@functools.lru_cache(maxsize=None)
def reference(variant: str):
    model, inputs = gemma3_case() if variant == "gemma_scope" else llava_case()
    kw = dict(plt=dict(skip=True, jumprelu=True), clt=dict(cross_layer=True, jumprelu=True),
              gemma_scope=dict(skip=True, jumprelu=True))[variant]
    ts = tt.random_set(model, d_sae=4, **kw)
    return model, inputs, ts, attribution_graph(model, inputs, ts, batch_size=64)


def test_circuit_tracer_single_layer_files(tmp_path):
    model, inputs, ts, want = reference("plt")
    for l in range(ts.n_layers):  # SingleLayerTranscoder.to_safetensors: W_enc [d_sae, d_model], W_skip applied x @ W_skip.T
        save_file({"W_enc": ts.W_enc[l].T.contiguous(), "W_dec": ts.W_dec[(l, l)], "b_enc": ts.b_enc[l],
                   "b_dec": ts.b_dec[l], "activation_function.threshold": ts.threshold[l], "W_skip": ts.W_skip[l]},
                  str(tmp_path / f"layer_{l}.safetensors"))
    read = TranscoderSet.from_circuit_tracer(tmp_path, input_hook=LN2)
    assert not read.cross_layer and read.scan == tmp_path.name
    same_graph(attribution_graph(model, inputs, read, batch_size=64), want)
    # our writer writes the same files
    out = ts.to_circuit_tracer(tmp_path / "ours")
    same_graph(attribution_graph(model, inputs, TranscoderSet.from_circuit_tracer(out, input_hook=LN2), batch_size=64),
               want)
    with pytest.raises(FileNotFoundError, match="neither"):
        TranscoderSet.from_circuit_tracer(tmp_path / "nothing")


def test_circuit_tracer_cross_layer_files(tmp_path):
    model, inputs, ts, want = reference("clt")
    n = ts.n_layers
    for i in range(n):  # CrossLayerTranscoder.to_safetensors
        save_file({f"W_enc_{i}": ts.W_enc[i].T.contiguous(), f"b_enc_{i}": ts.b_enc[i], f"b_dec_{i}": ts.b_dec[i],
                   f"threshold_{i}": ts.threshold[i]}, str(tmp_path / f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": torch.stack([ts.W_dec[(i, j)] for j in range(i, n)], 1).contiguous()},
                  str(tmp_path / f"W_dec_{i}.safetensors"))
    read = TranscoderSet.from_circuit_tracer(tmp_path, input_hook=LN2)
    assert read.cross_layer and read.targets_of(0) == list(range(n))
    same_graph(attribution_graph(model, inputs, read, batch_size=64), want)


def test_a_cross_layer_set_writing_only_to_its_own_layer_is_a_per_layer_set(tmp_path):
    model, inputs, ts, _ = reference("clt")
    plt = TranscoderSet(ts.W_enc, ts.b_enc, {(l, l): ts.W_dec[(l, l)] for l in range(ts.n_layers)}, ts.b_dec,
                        ts.input_hooks, ts.output_hooks, ts.threshold)
    clt = TranscoderSet(ts.W_enc, ts.b_enc, {k: (w if k[0] == k[1] else torch.zeros_like(w)) for k, w in ts.W_dec.items()},
                        ts.b_dec, ts.input_hooks, ts.output_hooks, ts.threshold)
    read = TranscoderSet.from_circuit_tracer(clt.to_circuit_tracer(tmp_path), input_hook=LN2)
    same_graph(attribution_graph(model, inputs, read, batch_size=64), attribution_graph(model, inputs, plt, batch_size=64))


def write_gemma_scope_2(ts: TranscoderSet, root) -> list:
    """Gemma Scope 2's layout: transcoder_all/layer_{l}_width_16k_l0_small_affine/params.safetensors, w_enc [d_in,
    d_sae], w_dec [d_sae, d_out], affine_skip_connection stored so that SAELens's W_skip = it (x @ W_skip.T)."""
    folders = []
    for l in range(ts.n_layers):
        f = root / "transcoder_all" / f"layer_{l}_width_16k_l0_small_affine"
        f.mkdir(parents=True)
        save_file({"w_enc": ts.W_enc[l].contiguous(), "w_dec": ts.W_dec[(l, l)], "b_enc": ts.b_enc[l],
                   "b_dec": ts.b_dec[l], "threshold": ts.threshold[l], "affine_skip_connection": ts.W_skip[l]},
                  str(f / "params.safetensors"))
        folders.append(f)
    return folders


def test_gemma_scope_2_layout(tmp_path):
    model, inputs, ts, want = reference("gemma_scope")
    folders = write_gemma_scope_2(ts, tmp_path)
    read = TranscoderSet.from_gemma_scope_2(folders)
    assert read.input_hooks[1] == "blocks.1.ln2.hook_normalized" and read.output_hooks[1] == "blocks.1.hook_mlp_out"
    same_graph(attribution_graph(model, inputs, read, batch_size=64), want)
    with pytest.raises(ValueError, match="layer 0's"):
        TranscoderSet.from_gemma_scope_2(folders[1:])


def test_gemma_scope_2_as_saelens_loads_it(tmp_path, monkeypatch):
    """SAELens's own gemma_3 loader (its hub download pointed at the fixture), then the steps of its
    ``SAE.from_pretrained`` -> SAELens transcoders -> the same graph."""
    pytest.importorskip("sae_lens")
    from sae_lens import SAE
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from sae_lens.saes.sae import handle_config_defaulting
    from safetensors import safe_open

    model, inputs, ts, want = reference("gemma_scope")
    write_gemma_scope_2(ts, tmp_path)
    repo = "google/gemma-scope-2-4b-it"

    def download(repo_id, filename, subfolder=None, **kw):
        path = tmp_path / (subfolder or "") / filename
        if not path.is_file():
            raise loaders.EntryNotFoundError(f"{path} (the fixture has no config.json, as the hub's folders)")
        return str(path)

    def shapes(repo_id, filename, **kw):
        with safe_open(str(tmp_path / filename), "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}

    monkeypatch.setattr(loaders, "hf_hub_download", download)
    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes", shapes)
    saes = []
    for l in range(ts.n_layers):
        cfg, state, _ = loaders.gemma_3_sae_huggingface_loader(repo, f"transcoder_all/layer_{l}_width_16k_l0_small_affine")
        assert cfg["architecture"] == "jumprelu_skip_transcoder" and cfg["hook_name"] == f"blocks.{l}.hook_mlp_in"
        cfg = handle_config_defaulting(cfg)
        sae_cfg = SAE.get_sae_config_class_for_architecture(cfg["architecture"]).from_dict(cfg)
        sae = SAE.get_sae_class_for_architecture(sae_cfg.architecture())(sae_cfg)
        sae.process_state_dict_for_loading(state)
        sae.load_state_dict(state)
        assert sae.cfg.metadata.hook_name == f"blocks.{l}.hook_mlp_in"  # TL's name: our ln2.hook_normalized
        saes.append(sae)
    same_graph(attribution_graph(model, inputs, saes, batch_size=64), want)


def test_saelens_transcoders_saved_by_saelens(tmp_path):
    pytest.importorskip("sae_lens")
    from sae_lens import SAE, JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig

    from hooked_vlm.saes import load_sae

    model, inputs, ts, want = reference("plt")
    folders = []
    for l in range(ts.n_layers):
        d_in, d_sae = ts.W_enc[l].shape
        cfg = JumpReLUSkipTranscoderConfig(d_in=d_in, d_sae=d_sae, d_out=d_in, dtype="float32", device="cpu",
                                           apply_b_dec_to_input=False)
        cfg.metadata.hook_name, cfg.metadata.hook_name_out = ts.input_hooks[l], ts.output_hooks[l]
        sae = JumpReLUSkipTranscoder(cfg)
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "b_dec"):
                getattr(sae, name).copy_(getattr(ts, name)[l])
            sae.W_dec.copy_(ts.W_dec[(l, l)])
            sae.threshold.copy_(ts.threshold[l])
            sae.W_skip.copy_(ts.W_skip[l])
        sae.save_model(str(tmp_path / f"layer_{l}"))
        folders.append(tmp_path / f"layer_{l}")
        x = torch.randn(5, d_in)  # SAELens's forward is what our set computes
        assert (sae(x) - (ts.decode_to(l, {l: ts.encode(l, x)}) + ts.skip(l, x))).abs().max() <= 1e-5
    saes = [load_sae(f) for f in folders]
    assert all(isinstance(s, SAE) for s in saes)
    same_graph(attribution_graph(model, inputs, saes, batch_size=64), want)


# ---------------------------------------------------------------- circuit-tracer's frontend graph schema
class Metadata(BaseModel):  # circuit_tracer/frontend/graph_models.py (0.5.0), field for field
    slug: str
    scan: str
    transcoder_list: list[str]
    prompt_tokens: list[str]
    prompt: str
    node_threshold: float | None = None
    schema_version: int | None = 1


class QParams(BaseModel):
    pinnedIds: list[str]
    supernodes: list[list[str]]
    linkType: str
    clickedId: str
    sg_pos: str


class Node(BaseModel):
    node_id: str
    feature: int
    layer: str
    ctx_idx: int
    feature_type: str
    token_prob: float = 0.0
    is_target_logit: bool = False
    run_idx: int = 0
    reverse_ctx_idx: int = 0
    jsNodeId: str
    clerp: str = ""
    influence: float | None = None
    activation: float | None = None


class Model(BaseModel):
    metadata: Metadata
    qParams: QParams
    nodes: list[Node]
    links: list[dict]


def test_to_json_follows_circuit_tracers_schema(tmp_path):
    model, inputs, ts, g = reference("plt")
    out = g.to_json(str(tmp_path / "g.json"), slug="tiny", node_threshold=0.9, edge_threshold=0.99)
    parsed = Model.model_validate(json.loads((tmp_path / "g.json").read_text()))
    assert parsed.metadata.slug == "tiny" and len(parsed.metadata.prompt_tokens) == g.n_pos
    ids = [n.node_id for n in parsed.nodes]
    assert len(ids) == len(set(ids))
    kinds = {n.feature_type for n in parsed.nodes}
    assert {"embedding", "logit", "cross layer transcoder"} <= kinds
    assert sum(n.feature_type == "embedding" for n in parsed.nodes) == g.n_pos  # every input kept
    patches = [n for n in out["nodes"] if "image_cell" in n]
    assert len(patches) == 16 and {tuple(n["image_cell"]) for n in patches} == {(0, r, c) for r in range(4) for c in range(4)}
    by_id = {n.node_id: n for n in parsed.nodes}
    assert parsed.links and all(link["source"] in by_id and link["target"] in by_id for link in parsed.links)
    logit_ids = [i[0] for i in g.logit_targets.ids]

    def index(n: Node) -> int:
        if n.feature_type == "cross layer transcoder":
            return g.feature_node(int(n.layer), n.ctx_idx, int(n.node_id.split("_")[1]))
        if n.feature_type == "mlp reconstruction error":
            return g.error_node(int(n.layer), n.ctx_idx)
        if n.feature_type == "embedding":
            return g.input_node(n.ctx_idx)
        return g.logit_node(logit_ids.index(n.feature))

    # every link's weight is the adjacency entry of its (target, source)
    for link in parsed.links:
        assert float(g.adjacency[index(by_id[link["target"]]), index(by_id[link["source"]])]) == link["weight"]
    assert sum(n.is_target_logit for n in parsed.nodes) == 1
