"""Loading a bf16 checkpoint makes no fp32 copy: peak resident memory while loading, measured in a fresh process.

A LLaVA-shaped checkpoint big enough that its weights dominate (~150 MB in bf16) is written straight
from HF's own tensor names and shapes (HF's model built on meta, then random bf16 tensors: no fp32
model is ever built). A subprocess imports everything and loads a tiny checkpoint first (so code and
import memory are in its baseline), then resets its peak-RSS counter and loads the big one at bf16.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests import tiny

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1.2  # peak RSS growth / bf16 weight bytes

PROBE = r"""
import json, resource, sys, torch
from hooked_vlm import HookedVLM

def peak_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

HookedVLM.from_pretrained(sys.argv[2], dtype=torch.bfloat16, processor=None)  # warm-up: imports, code paths
try:
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
    reset = True
except OSError:
    reset = False
before = rss_kb()
model = HookedVLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16, processor=None)
peak = peak_kb()
print(json.dumps({"before_kb": before, "peak_kb": peak, "reset": reset,
                  "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
                  "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}))
"""


def write_big_bf16_checkpoint(folder: Path) -> int:
    """config.json + model.safetensors (bf16) of a LLaVA with a 4-layer, d_model 1024 LM; returns the weight bytes."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from tests.test_real_configs import saved_names

    text = tiny.llama_text_config(hidden_size=1024, intermediate_size=4096, num_hidden_layers=4, num_attention_heads=8,
                                  num_key_value_heads=8, vocab_size=8192)
    config = LlavaConfig(text_config=text, vision_config=tiny.clip_vision_config(), image_token_id=tiny.IMAGE_TOKEN,
                         vision_feature_layer=-2, vision_feature_select_strategy="default", dtype="bfloat16",
                         architectures=["LlavaForConditionalGeneration"])
    with torch.device("meta"):
        hf = LlavaForConditionalGeneration(config)
    torch.manual_seed(0)
    tensors = {k: torch.empty(shape, dtype=torch.bfloat16).uniform_(-0.05, 0.05) for k, shape in saved_names(hf).items()}
    config.save_pretrained(folder)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def test_bf16_load_peak_memory_is_about_the_weights(tmp_path):
    weight_bytes = write_big_bf16_checkpoint(tmp_path)
    assert weight_bytes > 100e6  # the weights dominate anything else the load allocates
    warm, _ = tiny.make_llava()
    run = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path), str(warm)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["dtypes"] == ["torch.bfloat16"]
    growth = (out["peak_kb"] - out["before_kb"]) * 1024
    ratio = growth / weight_bytes
    print(f"bf16 weights {weight_bytes / 2**20:.1f} MiB, peak RSS growth {growth / 2**20:.1f} MiB, ratio {ratio:.3f} "
          f"(peak counter reset: {out['reset']})")
    assert out["param_bytes"] <= weight_bytes
    assert ratio < LIMIT, f"loading a bf16 checkpoint peaked at {ratio:.2f}x its weight bytes (materialising in fp32 first measured 2.15x)"
