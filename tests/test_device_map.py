"""Device maps (hooked_vlm.devices): planning with accelerate, loading onto a map, offload, hooks, generate, caches.

This machine may have no accelerator: the plans for "cuda:0" / "cuda:1" are computed for a fake max_memory and
asserted; the runs use "cpu" plus disk offload (real on any machine: the offloaded weights live in the offload
folder and come back for each forward); the two-device and CPU-offload runs are skipped without CUDA.
Mapped and plain models run the same kernels on the same weights, so their numbers are compared EXACTLY.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from hooked_vlm import HookedVLM
from hooked_vlm.devices import (check_device_map, device_bytes, execution_device, plan_device_map,
                                suggest_device_map)
from hooked_vlm.inspect import meta_model
from hooked_vlm.loading import converter_for

from . import tiny

REAL_7B = Path(__file__).parent / "real_configs" / "llava-hf__llava-1.5-7b-hf.json"
# the tiny LLaVA (3 LM blocks, a 3-block CLIP tower): embed + vision + projector on the CPU, the rest on disk
CPU_DISK = {"embed": "cpu", "vision": "cpu", "projector": "cpu", "rotary": "cpu", "blocks.0": "cpu",
            "blocks.1": "disk", "blocks.2": "disk", "ln_final": "disk", "unembed": "disk"}


@pytest.fixture(scope="module")
def built():
    return tiny.llava()


@pytest.fixture(scope="module")
def offload_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("offload")


@pytest.fixture(scope="module")
def mapped(built, offload_dir):
    return HookedVLM.from_pretrained(str(built.folder), device_map=CPU_DISK, offload=offload_dir)


@functools.lru_cache(maxsize=1)
def meta_7b(dtype=torch.bfloat16):
    """llava-1.5-7b's published config.json as our model on the meta device (13.2 GiB in bfloat16)."""
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(REAL_7B, Path(folder) / "config.json")
        _, _, cfg = converter_for(Path(folder))
    return meta_model(cfg).to(dtype)


def test_plan_respects_max_memory_and_keeps_blocks_whole():
    model = meta_7b()
    limits = {"cuda:0": 6 * 2**30, "cuda:1": 5 * 2**30, "cpu": 3 * 2**30}
    plan = plan_device_map(model, limits, offload="/nonexistent/not/written/by/planning")
    top = {n for n, _ in model.named_children()}
    for name in plan:  # whole top-level modules or whole blocks, never a part of a block / the tower / projector
        assert name in top or (name.startswith("blocks.") and name.count(".") == 1), name
    used = device_bytes(model, plan)
    assert set(used) >= {"cuda:0", "cuda:1"}
    for device, nbytes in used.items():
        assert nbytes <= limits.get(device, float("inf")), (device, nbytes)
    order = ["cuda:0", "cuda:1", "cpu", "disk"]  # blocks fill the devices in max_memory order
    block_devices = [order.index(plan[f"blocks.{l}"] if f"blocks.{l}" in plan else plan["blocks"]) for l in range(32)]
    assert block_devices == sorted(block_devices)
    assert check_device_map(model, plan, offload="/f") == plan  # every weight covered once, nothing split


def test_plan_too_small_raises_or_offloads_to_disk():
    model = meta_7b()
    small = {"cuda:0": "6GiB", "cuda:1": "4GiB"}
    with pytest.raises(ValueError, match=r"does not fit in max_memory .*offload='cpu'.*offload='/path/to/folder'"):
        plan_device_map(model, small)
    plan = plan_device_map(model, small, offload="/offload/folder")
    assert "disk" in plan.values() and plan["unembed"] in ("disk", "cuda:0")
    with pytest.raises(ValueError, match="max_memory\\[.cuda:0.\\] = '6 gigs'"):
        plan_device_map(model, {"cuda:0": "6 gigs"})


@pytest.mark.parametrize("device_map, offload, match", [
    ({**CPU_DISK, "blocks.7": "cpu"}, "f", r"'blocks.7', which is not a module.*Did you mean"),
    ({**CPU_DISK, "embd": "cpu"}, "f", r"Did you mean 'embed'"),
    ({k: v for k, v in CPU_DISK.items() if k != "unembed"}, "f", r"no device to 1 weight\(s\): unembed.weight"),
    ({**{k: v for k, v in CPU_DISK.items() if k != "blocks.1"}, "blocks.1.attn": "cpu", "blocks.1.mlp": "cpu",
      "blocks.1.ln1": "cpu", "blocks.1.ln2": "cpu"}, "f", r"splits 'blocks.1' \(TransformerBlock\)"),
    ({**CPU_DISK, "vision.blocks.0": "cpu"}, "f", r"maps 'vision' and, inside it, 'vision.blocks.0'"),
    ({**CPU_DISK, "blocks.0": "gpu7"}, "f", r"device_map\['blocks.0'\]: 'gpu7' is not a device"),
    ({**CPU_DISK, "blocks.0": "meta"}, "f", r"'meta' holds no weights"),
    (CPU_DISK, None, r"puts blocks.1-2, ln_final, unembed on 'disk'; give the folder"),
])
def test_bad_device_maps(built, device_map, offload, match):
    model = meta_model(converter_for(built.folder)[2])
    with pytest.raises(ValueError, match=match):
        check_device_map(model, device_map, offload)


def test_tied_weights_stay_together(built):
    cfg = converter_for(built.folder)[2]
    cfg.tie_word_embeddings = True
    model = meta_model(cfg)  # W_E is W_U
    half = device_bytes(model, {"": "cpu"})["cpu"] // 2
    plan = plan_device_map(model, {"cuda:0": half, "cuda:1": 2 * half})
    assert set(plan.values()) == {"cuda:0", "cuda:1"}
    assert plan["unembed"] == plan["embed"] == "cuda:0"  # accelerate keeps a tied group on one device
    bad = {**plan, "unembed": "cuda:1"}
    with pytest.raises(ValueError, match="embed.weight and unembed.weight are one tied weight"):
        check_device_map(model, bad)


def test_load_errors(built, tmp_path):
    folder = str(built.folder)
    with pytest.raises(ValueError, match="not available: this machine has"):
        HookedVLM.from_pretrained(folder, device_map={**CPU_DISK, "blocks.0": f"cuda:{torch.cuda.device_count()}"},
                                  offload=tmp_path)
    with pytest.raises(ValueError, match="max_memory plans device_map='auto'"):
        HookedVLM.from_pretrained(folder, device_map=CPU_DISK, max_memory={"cpu": "1GiB"}, offload=tmp_path)
    with pytest.raises(ValueError, match="pass device_map='auto'"):
        HookedVLM.from_pretrained(folder, offload=tmp_path)
    with pytest.raises(ValueError, match="device_map must be 'auto' or a dict"):
        HookedVLM.from_pretrained(folder, device_map="balanced")


def test_offloaded_model_equals_plain(built, mapped, offload_dir):
    plain = built.model
    assert mapped.blocks[2].attn.q_proj.weight.is_meta and mapped.unembed.weight.is_meta  # on disk between forwards
    assert not mapped.blocks[0].attn.q_proj.weight.is_meta and mapped.device == torch.device("cpu")
    offloaded = set(json.loads((offload_dir / "index.json").read_text()))
    assert offloaded == {n for n, _ in plain.named_parameters() if n.startswith(("blocks.1.", "blocks.2.", "ln_final",
                                                                                   "unembed"))}
    with torch.no_grad():  # a padded batch with images
        a, la = plain(**built.inputs, return_type="both")
        b, lb = mapped(**built.inputs, return_type="both")
    assert (a - b).abs().max().item() == 0.0 and (la - lb).abs().item() == 0.0  # same kernels, same weights


def test_auto_map_over_cpu_and_disk_equals_plain(built, tmp_path):
    plain = built.model
    sizes = device_bytes(plain, {"": "cpu"})["cpu"]
    model = HookedVLM.from_pretrained(str(built.folder), device_map="auto", max_memory={"cpu": sizes * 2 // 3},
                                      offload=tmp_path)
    assert set(model.device_map.values()) == {"cpu", "disk"}
    assert all(n.count(".") <= 1 for n in model.device_map)
    with torch.no_grad():
        assert (plain(**built.inputs) - model(**built.inputs)).abs().max().item() == 0.0


def test_tied_embeddings_offloaded_to_disk_equal_plain(tmp_path):
    """W_E is W_U: both names are written to the offload folder; the embedding on disk makes the CPU the main device."""
    tied = tiny.llava(text=tiny.llama_text_config(tie_word_embeddings=True), tie_word_embeddings=True)
    assert tied.model.unembed.weight is tied.model.embed.weight
    on_disk = {**CPU_DISK, "embed": "disk", "blocks.1": "cpu", "ln_final": "cpu"}
    model = HookedVLM.from_pretrained(str(tied.folder), device_map=on_disk, offload=tmp_path)
    assert model.embed.weight.is_meta and model.device == torch.device("cpu")
    with torch.no_grad():
        assert (tied.model(**tied.inputs) - model(**tied.inputs)).abs().max().item() == 0.0


def test_hooks_see_their_block_on_its_device_with_its_weights(built, mapped):
    """Each hook gets its activation on its block's execution device, and inside an offloaded block the block's
    weights are in place (accelerate preloads the whole block), so a hook may read them."""
    seen = {}

    def record(t, hook):
        block = mapped.get_submodule(hook.name.rsplit(".", 1)[0]) if hook.name.startswith("blocks.") else None
        w = None if block is None or not hasattr(block, "attn") else block.attn.o_proj.weight
        seen[hook.name] = (t.device, None if w is None else w.device, None if w is None else w.clone())

    names = ["hook_embed"] + [f"blocks.{l}.{h}" for l in range(3) for h in ("hook_resid_pre", "hook_resid_post")]
    with torch.no_grad():
        mapped.run_with_hooks(**built.unpadded, fwd_hooks=[(n, record) for n in names])
    assert set(seen) == set(names)
    for name, (device, w_device, w) in seen.items():
        assert device == execution_device(mapped, name)
        if w is not None:
            layer = int(name.split(".")[1])
            assert w_device == device and torch.equal(w, built.model.blocks[layer].attn.o_proj.weight)


def test_generate_across_map_equals_plain(built, mapped):
    inputs = built.inputs  # padded batch with images

    def ablate(t, hook):  # zero the image positions' residual after an offloaded block
        return t.masked_fill(hook.spans.mask("image")[:, hook.query_positions].to(t.device)[..., None], 0.0)

    hooks = [("blocks.1.hook_resid_post", ablate)]
    out = {}
    for name, fwd_hooks in (("free", None), ("ablated", hooks)):
        out[name] = built.model.generate(**inputs, max_new_tokens=4, return_type="tokens", fwd_hooks=fwd_hooks)
        assert torch.equal(out[name], mapped.generate(**inputs, max_new_tokens=4, return_type="tokens",
                                                      fwd_hooks=fwd_hooks))  # KV cache on the map: same tokens
    assert not torch.equal(out["free"], out["ablated"])  # the hook in the offloaded block changed the answer


def test_cache_device_gathers(built, mapped):
    with torch.no_grad():
        _, ref = built.model.run_with_cache(**built.inputs)
        _, cache = mapped.run_with_cache(**built.inputs, cache_device="cpu")
    assert set(cache.keys()) == set(ref.keys())
    for name in ref.keys():
        assert cache[name].device == torch.device("cpu") and torch.equal(cache[name], ref[name]), name
    with pytest.raises(ValueError, match="cache_device or device"):
        mapped.run_with_cache(**built.inputs, cache_device="cpu", device="cpu")


def test_masks_and_caches_follow_the_device_they_are_sent_to(built, mapped):
    """The plumbing a second device relies on, checked without one: accelerate's send_to_device (what a block's
    AlignDevicesHook calls on its inputs) moves an AttentionMask's tensors, and cache_device reaches TL's cache.
    "meta" is only a destination here (nothing runs on it)."""
    from accelerate.utils import send_to_device

    from hooked_vlm.components.masks import AttentionMask

    mask = AttentionMask(causal=True, key_padding=torch.ones(2, 5, dtype=torch.bool),
                         query_positions=torch.arange(5), k_len=5, block_ids=torch.zeros(2, 5, dtype=torch.long))
    assert mask.to("cpu") is mask
    moved = send_to_device((torch.zeros(1), mask), "meta")[1]
    assert isinstance(moved, AttentionMask) and moved.k_len == 5 and moved.causal
    assert {t.device.type for t in (moved.key_padding, moved.query_positions, moved.block_ids)} == {"meta"}
    with torch.no_grad():
        _, cache = mapped.run_with_cache(**built.unpadded, names_filter=lambda n: "resid" in n, cache_device="meta")
    assert len(cache.keys()) and {cache[n].device.type for n in cache.keys()} == {"meta"}


def test_inspect_suggests_a_device_map(built, capsys):
    from hooked_vlm.cli import main

    model = meta_model(converter_for(built.folder)[2])
    total = device_bytes(model, {"": "cpu"})["cpu"]
    per_gpu = f"{total * 0.7 / 2**20:.3f}MiB"
    assert main(["inspect", str(built.folder), "--max-memory", f"cuda:0={per_gpu},cuda:1={per_gpu}",
                 "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "device map at float32" in out and "cuda:0: embed" in out and "\n    cuda:1: " in out
    assert "device_map='auto', max_memory={'cuda:0': " in out
    plan, lines = suggest_device_map(model, "m", {"cuda:0": "1KiB"}, dtype=torch.float32)  # what exit 1 prints
    assert plan is None and "does not fit in max_memory" in lines[-1]
    assert main(["inspect", str(built.folder), "--max-memory", "cuda:0"]) == 2
    assert "is not DEVICE=SIZE" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_offload_to_a_gpu_equals_plain(built, tmp_path):
    plain = HookedVLM.from_pretrained(str(built.folder), device="cuda:0")
    gpu_map = {**CPU_DISK, "embed": "cuda:0", "vision": "cuda:0", "projector": "cuda:0", "rotary": "cuda:0",
               "blocks.0": "cuda:0", "blocks.1": "cpu"}  # blocks.1 in CPU RAM, blocks.2... on disk, all run on cuda:0
    model = HookedVLM.from_pretrained(str(built.folder), device_map=gpu_map, offload=tmp_path)
    assert model.blocks[1].attn.q_proj.weight.is_meta
    with torch.no_grad():
        assert (plain(**built.inputs) - model(**built.inputs)).abs().max().item() == 0.0
    a = plain.generate(**built.inputs, max_new_tokens=6, return_type="tokens")
    assert torch.equal(a, model.generate(**built.inputs, max_new_tokens=6, return_type="tokens"))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_devices(built):
    plain = HookedVLM.from_pretrained(str(built.folder), device="cuda:0")
    two = {**{k: "cuda:0" for k in CPU_DISK}, "blocks.1": "cuda:1", "blocks.2": "cuda:1", "ln_final": "cuda:1"}
    model = HookedVLM.from_pretrained(str(built.folder), device_map=two)
    devices = {}
    names = [f"blocks.{l}.{h}" for l in range(3) for h in ("hook_resid_pre", "attn.hook_pattern", "hook_resid_post")]
    with torch.no_grad():
        logits, cache = model.run_with_cache(**built.inputs, names_filter=names)
        _, gathered = model.run_with_cache(**built.inputs, names_filter=names, cache_device="cpu")
        model.run_with_hooks(**built.inputs, fwd_hooks=[(n, lambda t, hook: devices.__setitem__(hook.name, t.device))
                                                        for n in names])
        ref = plain(**built.inputs)
    assert devices["blocks.0.hook_resid_post"] == torch.device("cuda:0")
    assert devices["blocks.1.hook_resid_pre"] == devices["blocks.2.attn.hook_pattern"] == torch.device("cuda:1")
    assert (logits - ref).abs().max().item() <= 1e-5 and logits.device == torch.device("cuda:0")  # same GPU kernels
    assert all(gathered[n].device == torch.device("cpu") and torch.equal(gathered[n], cache[n].cpu()) for n in names)
    a = plain.generate(**built.inputs, max_new_tokens=6, return_type="tokens")
    assert torch.equal(a, model.generate(**built.inputs, max_new_tokens=6, return_type="tokens"))
