"""`hooked-vlm inspect`: the report's numbers against independent computations, failures named, hub ids header-only."""

from __future__ import annotations

import fnmatch
import functools
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hooked_vlm import HookedVLM, inspect_checkpoint
from hooked_vlm.cli import main
from hooked_vlm.inspect import meta_model
from hooked_vlm.memory import activation_bytes, is_lm_hook
from hooked_vlm.model import KVCache
from tests import tiny, tiny_native, tiny_next_pixtral, tiny_qwen_idefics

ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def checkpoint(kv_heads: int = 4):
    folder, hf = tiny.make_llava(text=tiny.llama_text_config(num_key_value_heads=kv_heads))
    tiny.save_llava_processor(folder)
    return folder, hf


def _variant(edit) -> Path:
    """A copy of the tiny checkpoint whose safetensors file is rewritten by ``edit(tensors)``."""
    folder, _ = checkpoint()
    out = Path(tempfile.mkdtemp(prefix="inspect_variant_"))
    for f in folder.iterdir():
        shutil.copy(f, out / f.name)
    tensors = load_file(str(out / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_report_numbers_match_independent_computations():
    folder, hf = checkpoint()
    report = inspect_checkpoint(str(folder))
    assert report.loadable, report.problems
    assert report.architecture == "LlavaForConditionalGeneration" and report.converter == "converters.llava"
    # ours = HF's parameters minus CLIP's post_layernorm, which LLaVA never reads (the keymap's ignored list)
    not_converted = sum(p.numel() for n, p in hf.named_parameters() if "post_layernorm" in n)
    assert not_converted > 0 and report.n_parameters == hf.num_parameters() - not_converted
    assert report.weight_bytes == {"float32": 4 * report.n_parameters, "bfloat16": 2 * report.n_parameters,
                                   "float16": 2 * report.n_parameters}
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:  # the safetensors library's own reader
        stored = [f.get_tensor(k) for k in f.keys()]
    assert report.checkpoint_tensors == len(stored)
    assert report.checkpoint_parameters == sum(t.numel() for t in stored) == hf.num_parameters()
    assert report.checkpoint_bytes == sum(t.numel() * t.element_size() for t in stored)
    model = HookedVLM.from_pretrained(str(folder))
    assert report.n_hook_points == len(model.hook_dict)
    assert report.image_tokens_per_image == tiny.image_tokens_per_image(hf) == 16
    assert [(t.name, t.n_layers, t.d_model, t.n_heads) for t in report.towers] == [
        ("language model", hf.config.text_config.num_hidden_layers, hf.config.text_config.hidden_size,
         hf.config.text_config.num_attention_heads),
        ("vision tower", hf.config.vision_config.num_hidden_layers, hf.config.vision_config.hidden_size,
         hf.config.vision_config.num_attention_heads)]
    m = report.mapping
    assert len(m.plan) == len(stored) - 2 and not (m.unused or m.missing or m.misshaped)
    assert sorted(k for k, _ in m.ignored) == ["vision_tower.post_layernorm.bias", "vision_tower.post_layernorm.weight"]


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_kv_and_cache_memory_equal_a_real_run(kv_heads):
    """The meta-device sizing equals the bytes a real KV cache and a real full run_with_cache hold (text-only)."""
    folder, _ = checkpoint(kv_heads)
    model = HookedVLM.from_pretrained(str(folder))
    tokens = torch.randint(3, 90, (1, 11))
    kv = KVCache(model.cfg.n_layers)
    with torch.no_grad():
        model(tokens, kv_cache=kv)
        _, cache = model.run_with_cache(tokens)
    real_kv = sum(t.numel() * t.element_size() for layer in kv.layers for t in (layer.k, layer.v))
    real_cache = sum(v.numel() * v.element_size() for k, v in cache.items() if is_lm_hook(k))
    assert {k for k in model.hook_dict if is_lm_hook(k)} == {k for k in cache.keys() if is_lm_hook(k)}
    from hooked_vlm.memory import kv_cache_bytes

    assert kv_cache_bytes(model.cfg.text, 11, 4) == real_kv
    planned, note = activation_bytes(meta_model(model.cfg), 11, {"float32": 4})
    assert planned["float32"] == real_cache and "not sized" not in note
    report = inspect_checkpoint(str(folder))  # at 1000 tokens: the same functions, scaled as the shapes say
    assert report.kv_cache_bytes_per_1k["float32"] == real_kv * 1000 // 11
    assert report.kv_cache_bytes_per_1k["bfloat16"] == real_kv * 1000 // 11 // 2


def test_vision_cache_memory_equals_a_real_run_with_one_image():
    folder, hf = checkpoint()
    model = HookedVLM.from_pretrained(str(folder))
    inputs = tiny.llava_batch(hf, [1], [0])
    with torch.no_grad():
        _, cache = model.run_with_cache(**inputs)
    real = sum(v.numel() * v.element_size() for k, v in cache.items() if not is_lm_hook(k))
    assert {k for k in cache.keys() if not is_lm_hook(k)} == {k for k in model.hook_dict if not is_lm_hook(k)}
    report = inspect_checkpoint(str(folder))
    assert report.vision_cache_bytes_per_image["float32"] == real and "not sized" not in report.vision_cache_note


def test_cli_prints_the_report_and_exits_zero(capsys):
    folder, _ = checkpoint()
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    for text in ("LlavaForConditionalGeneration", "parameters:     64,272", "hook points:", "KV cache per 1000 tokens",
                 "image tokens per image: 16", "result:         loads"):
        assert text in out


def test_missing_tensor_exits_nonzero_naming_it(capsys):
    folder = _variant(lambda t: t.pop("language_model.model.layers.1.mlp.up_proj.weight"))
    assert main(["inspect", str(folder)]) == 1
    out = capsys.readouterr()
    assert "missing blocks.1.mlp.up_proj.weight" in out.out and "WOULD NOT LOAD" in out.out
    assert "got no tensor from the checkpoint" in out.err and "blocks.1.mlp.up_proj.weight" in out.err
    run = subprocess.run([sys.executable, "-m", "hooked_vlm.cli", "inspect", str(folder)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # the real exit status of the command
    assert run.returncode == 1 and "blocks.1.mlp.up_proj.weight" in run.stderr


def test_misshaped_and_unused_tensors_are_named(capsys):
    def edit(t):
        t["language_model.model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 32)
        t["language_model.model.layers.0.mlp.extra.weight"] = torch.zeros(2)

    folder = _variant(edit)
    report = inspect_checkpoint(str(folder))
    assert not report.loadable
    assert report.mapping.unused == ["language_model.model.layers.0.mlp.extra.weight"]
    assert [(k, ours, s, e) for k, ours, s, e, _ in report.mapping.misshaped] == [
        ("language_model.model.layers.0.self_attn.k_proj.weight", "blocks.0.attn.k_proj.weight", (16, 32), (32, 32))]
    assert main(["inspect", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "misshaped language_model.model.layers.0.self_attn.k_proj.weight -> blocks.0.attn.k_proj.weight" in out
    assert "unused language_model.model.layers.0.mlp.extra.weight" in out


def test_unsupported_architecture_lists_the_supported(capsys):
    folder = _variant(lambda t: None)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["FooVLMForConditionalGeneration"]
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["inspect", str(folder)]) == 1
    out = capsys.readouterr()
    assert "'FooVLMForConditionalGeneration' is not supported. Supported architectures:" in out.err
    assert "LlavaForConditionalGeneration" in out.out and "Qwen2VLForConditionalGeneration" in out.out


def test_hub_id_reads_headers_only(monkeypatch, tmp_path):
    from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

    folder, _ = checkpoint()
    hub_id = "someone/tiny-llava-for-inspect"  # not a real repo: every hub call below is a fake
    calls = {"snapshot": [], "metadata": [], "file": []}

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls["snapshot"].append((repo_id, list(allow_patterns or ["*"])))
        out = tmp_path / "snapshot"
        out.mkdir(exist_ok=True)
        for f in folder.iterdir():  # what the hub would send: only the files the patterns allow
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns or ["*"]):
                shutil.copy(f, out / f.name)
        return str(out)

    def fake_metadata(repo_id, revision=None, **kwargs):
        calls["metadata"].append(repo_id)
        header = json.loads((folder / "model.safetensors").read_bytes()[8:8 + int.from_bytes(
            (folder / "model.safetensors").read_bytes()[:8], "little")])
        header.pop("__metadata__", None)
        tensors = {k: TensorInfo(dtype=v["dtype"], shape=v["shape"], data_offsets=tuple(v["data_offsets"]))
                   for k, v in header.items()}
        files = {"model.safetensors": SafetensorsFileMetadata(metadata={}, tensors=tensors)}
        return SafetensorsRepoMetadata(metadata=None, sharded=False, weight_map={k: "model.safetensors" for k in tensors},
                                       files_metadata=files)

    def fake_hf_hub_download(repo_id, filename, **kwargs):
        calls["file"].append(filename)
        return str(fake_snapshot_download(repo_id, allow_patterns=[filename])) + "/" + filename

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    monkeypatch.setattr("huggingface_hub.get_safetensors_metadata", fake_metadata)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_hf_hub_download)
    report = inspect_checkpoint(hub_id)
    local = inspect_checkpoint(str(folder))
    assert report.loadable, report.problems
    assert calls["metadata"] == [hub_id] and [c[0] for c in calls["snapshot"]] == [hub_id]
    fetched = [f.name for f in (tmp_path / "snapshot").iterdir()]
    assert "config.json" in fetched and not any(f.endswith((".safetensors", ".bin")) for f in fetched)
    assert not any(f.endswith((".safetensors", ".bin")) for f in calls["file"])
    for field in ("n_parameters", "checkpoint_parameters", "checkpoint_bytes", "n_hook_points", "weight_bytes",
                  "cache_bytes_per_1k", "image_tokens_per_image"):
        assert getattr(report, field) == getattr(local, field), field
    assert report.mapping.plan == local.mapping.plan


def test_refused_config_field_exits_nonzero_naming_it(capsys):
    folder = _variant(lambda t: None)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["use_fancy_norm"] = True
    (folder / "config.json").write_text(json.dumps(config))
    assert main(["inspect", str(folder)]) == 1
    out = capsys.readouterr()
    assert "does not handle the config field(s) use_fancy_norm=True" in out.err and "WOULD NOT LOAD" in out.out


def test_missing_shard_and_truncated_file_exit_nonzero(tmp_path, capsys):
    _, hf = checkpoint()
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    assert main(["inspect", str(tmp_path)]) == 1
    assert f"names shard(s) that are not in the folder: {shards[-1].name}" in capsys.readouterr().err
    folder = _variant(lambda t: None)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert main(["inspect", str(folder)]) == 1
    assert "truncated or corrupt" in capsys.readouterr().err


def test_unreachable_name_exits_nonzero_with_the_hub_error(monkeypatch, capsys):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, **kwargs):
        raise LocalEntryNotFoundError(f"cannot find {repo_id} in the local cache and outgoing traffic is disabled")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    assert main(["inspect", "toy-chamelon"]) == 1  # a typo of a shipped toy: not a folder, not a toy, not on the hub
    err = capsys.readouterr().err
    assert "toy-chamelon is not a local folder, not a shipped toy, and the hub could not give its files" in err
    assert "LocalEntryNotFoundError" in err


def test_folder_without_config_json_exits_nonzero(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 1
    assert "has no config.json" in capsys.readouterr().err


FAMILIES = {  # tiny checkpoints written by HF's save_pretrained: (folder, hf model)
    "janus": tiny_native.make_janus,
    "chameleon": tiny_native.make_chameleon,
    "qwen2_vl": lambda: tiny_qwen_idefics.make_qwen("2"),
    "mistral3": tiny_next_pixtral.make_mistral3,
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_inspect_agrees_with_loading_and_hf(family):
    """Header-only inspect vs a real load and HF's model: parameters (HF's minus what the KeyMap ignores, e.g.
    Janus image generation), hook points, and one planned tensor per parameter the load filled."""
    folder, hf = FAMILIES[family]()
    report = inspect_checkpoint(str(folder))
    assert report.loadable, report.problems
    model = HookedVLM.from_pretrained(str(folder), processor=None)
    assert report.n_parameters == sum(p.numel() for p in model.parameters())
    assert report.n_hook_points == len(model.hook_dict)
    from converters import get_converter

    keymap = get_converter(hf.config.architectures[0]).make_keymap(model.cfg)
    not_converted = {n: p.numel() for n, p in hf.named_parameters() if keymap.target(n) is None}
    assert report.n_parameters == hf.num_parameters() - sum(not_converted.values())
    if family == "janus":  # the image-generation modules are the documented difference
        assert not_converted and all(n.startswith(("model.vqmodel.", "model.generation_")) for n in not_converted)
        assert sum(not_converted.values()) == sum(p.numel() for n, p in hf.named_parameters()
                                                  if n.startswith(("model.vqmodel.", "model.generation_")))
        generation = [reason for k, reason in report.mapping.ignored if k.startswith(("model.vqmodel.", "model.generation_"))]
        assert generation and all("image generation" in reason for reason in generation)
    else:
        assert not_converted == {}
