"""Loading: both key layouts, sharded checkpoints, hub ids (same path), half precision, processor end to end."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hooked_vlm import HookedVLM
from tests import tiny


def base():
    """(folder, hf, inputs): the shared tiny GQA LLaVA (parity case llava-llama-gqa; saved with its processor)."""
    b = tiny.llava(text=tiny.llama_text_config(num_key_value_heads=2), images=(1, 2), pads=(3, 0))
    return b.folder, b.hf, b.inputs


def _max_diff(a, b, inputs):
    real = inputs["attention_mask"].bool()
    return (a[real] - b[real]).abs().max().item()


def _copy_with_weights(folder: Path, tensors: dict) -> Path:
    out = Path(tempfile.mkdtemp(prefix="ckpt_"))
    for f in folder.iterdir():
        if not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy(f, out / f.name)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_in_memory_key_layout_loads_the_same():
    folder, hf, inputs = base()
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight" or not hf.config.tie_word_embeddings}
    assert any(k.startswith("model.language_model.") for k in state)
    model = HookedVLM.from_pretrained(str(_copy_with_weights(folder, state)))
    with torch.no_grad():
        assert _max_diff(hf(**inputs).logits, model(**inputs), inputs) <= 1e-4


def test_hub_layout_with_inner_vision_model_prefix_loads():
    folder, hf, inputs = base()
    state = {k.replace("model.vision_tower.", "vision_tower.vision_model.").replace("model.language_model.", "language_model.model."): v
             for k, v in hf.state_dict().items()}
    model = HookedVLM.from_pretrained(str(_copy_with_weights(folder, state)))
    with torch.no_grad():
        assert _max_diff(hf(**inputs).logits, model(**inputs), inputs) <= 1e-4


def test_sharded_checkpoint_loads():
    _, hf, inputs = base()
    out = Path(tempfile.mkdtemp(prefix="sharded_"))
    hf.save_pretrained(out, max_shard_size="20KB")
    assert (out / "model.safetensors.index.json").exists()
    assert len(list(out.glob("*.safetensors"))) > 2
    model = HookedVLM.from_pretrained(str(out))
    with torch.no_grad():
        assert _max_diff(hf(**inputs).logits, model(**inputs), inputs) <= 1e-4


def test_hub_id_takes_the_same_path_as_a_local_folder(monkeypatch):
    folder, hf, inputs = base()
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, local_files_only=False):
        calls.append((repo_id, tuple(allow_patterns)))
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)  # nothing is downloaded
    hub_id = "llava-hf/some-tiny-llava"  # not a real repo: resolved by the fake above to the local folder
    model = HookedVLM.from_pretrained(hub_id)
    assert calls and calls[0][0] == hub_id and "*.safetensors" in calls[0][1]
    with torch.no_grad():
        assert _max_diff(hf(**inputs).logits, model(**inputs), inputs) <= 1e-4


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_half_precision_without_fp32_copy(dtype, atol, monkeypatch):
    folder, hf, inputs = base()
    seen = []
    original = torch.nn.Module.to_empty

    def spy(self, *args, **kwargs):
        seen.extend({p.dtype for p in self.parameters()})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to_empty", spy)
    model = HookedVLM.from_pretrained(str(folder), dtype=dtype)
    assert set(seen) == {dtype}  # materialised directly at the target dtype: no fp32 copy of the weights
    assert {p.dtype for p in model.parameters()} == {dtype}
    fp32 = HookedVLM.from_pretrained(str(folder))
    half_inputs = dict(inputs, pixel_values=inputs["pixel_values"].to(dtype))
    with torch.no_grad():
        ref = fp32(**inputs)
        out = model(**half_inputs).float()
    assert torch.isfinite(out).all()
    assert _max_diff(ref, out, inputs) <= atol * max(1.0, ref.abs().max().item())


def test_prepare_inputs_from_pil_images_matches_hf_processor():
    folder, hf, _ = base()
    from transformers import AutoProcessor

    model = HookedVLM.from_pretrained(str(folder))
    images = [tiny.pil_image(0), tiny.pil_image(1), tiny.pil_image(2)]
    prompts = ["USER: <image> what is this ? ASSISTANT:", "USER: <image> <image> describe the image ASSISTANT:"]
    ours = model.prepare_inputs(images=images, text=prompts)
    ref_inputs = AutoProcessor.from_pretrained(str(folder))(images=images, text=prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = hf(**ref_inputs).logits
        assert _max_diff(ref, model(**ours), ours) <= 1e-4
        assert _max_diff(ref, model(**ref_inputs), ours) <= 1e-4  # an HF processor's output dict works directly
        assert _max_diff(ref, model(ref_inputs), ours) <= 1e-4  # ... also as one positional mapping
    strs = model.to_str_tokens(ours, batch=1)
    assert strs[:3] == ["<s>", "USER:", "<img 0,0>"] and "<img 3,3>" in strs and strs[-1] == "ASSISTANT:"
    texts = model.generate(**ours, max_new_tokens=3, return_type="str")
    tokens = model.generate(**ours, max_new_tokens=3, return_type="tokens")
    n = ours["input_ids"].shape[1]
    assert texts == [model.tokenizer.decode(row[n:], skip_special_tokens=True) for row in tokens]
