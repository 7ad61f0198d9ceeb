"""Core benchmarks, as ratios against HF on the same model in one process (run by hand: `make bench`).

1. forward time of HookedVLM / HF (sdpa), median of N, ~600-token LLaVA-shaped prompt, ~200M parameters;
2. run_with_cache (every hook) / HF forward;
3. peak RSS growth during HookedVLM.from_pretrained / checkpoint size on disk (in a fresh subprocess).
Results go to benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_checkpoint(folder: Path, layers: int, hidden: int, vocab: int) -> None:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        text_config=dict(model_type="llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 2.75),
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64,
                         max_position_embeddings=4096),
        vision_config=dict(model_type="clip_vision_model", hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                           num_attention_heads=4, image_size=336, patch_size=14, projection_dim=256),
        image_token_id=vocab - 1, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)


def inputs_for(hf_config, text_tokens: int = 24):
    n_img = (hf_config.vision_config.image_size // hf_config.vision_config.patch_size) ** 2
    ids = [1] + [hf_config.image_token_id] * n_img + torch.randint(3, 1000, (text_tokens,)).tolist()
    return dict(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                pixel_values=torch.randn(1, 3, hf_config.vision_config.image_size, hf_config.vision_config.image_size))


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median time of each fn, the fns run in turn every repeat so load changes hit all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def rss_child(folder: str) -> None:
    """Subprocess: RSS growth while loading."""
    from hooked_vlm import HookedVLM  # noqa: F401  (imports before the baseline)
    import transformers  # noqa: F401

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open("/proc/self/status") as f:
        cur = [int(l.split()[1]) for l in f if l.startswith("VmRSS")][0]
    model = HookedVLM.from_pretrained(folder, processor=None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_kb": peak, "before_kb": cur, "base_max_kb": base,
                      "params": sum(p.numel() for p in model.parameters())}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import LlavaForConditionalGeneration

    from hooked_vlm import HookedVLM

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        build_checkpoint(folder, args.layers, args.hidden, args.vocab)
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        child = subprocess.run([sys.executable, __file__, "--rss-child", str(folder)], capture_output=True, text=True, check=True)
        rss = json.loads(child.stdout.strip().splitlines()[-1])
        growth = (rss["peak_kb"] - rss["before_kb"]) * 1024

        hf = LlavaForConditionalGeneration.from_pretrained(folder, attn_implementation="sdpa").eval()
        ours = HookedVLM.from_pretrained(str(folder), processor=None)
        inputs = inputs_for(hf.config)
        with torch.no_grad():
            diff = (hf(**inputs).logits - ours(**inputs)).abs().max().item()
            t = interleaved_medians({"hf": lambda: hf(**inputs), "ours": lambda: ours(**inputs),
                                     "cache": lambda: ours.run_with_cache(**inputs)}, args.repeats)
            t_hf, t_ours, t_cache = t["hf"], t["ours"], t["cache"]
            _, cache = ours.run_with_cache(**inputs)
        cache_gb = sum(v.numel() * v.element_size() for v in cache.values()) / 1e9
        n_params = sum(p.numel() for p in ours.parameters())
        result = {
            "params_M": round(n_params / 1e6, 1), "tokens": inputs["input_ids"].shape[1], "threads": args.threads,
            "max_abs_logit_diff": diff, "hf_sdpa_s": round(t_hf, 3), "hooked_s": round(t_ours, 3),
            "forward_ratio": round(t_ours / t_hf, 3), "run_with_cache_s": round(t_cache, 3),
            "cache_ratio": round(t_cache / t_hf, 3), "cache_entries": len(cache), "cache_GB": round(cache_gb, 2),
            "checkpoint_MB": round(size / 1e6, 1), "load_rss_growth_MB": round(growth / 1e6, 1),
            "load_rss_ratio": round(growth / size, 3),
        }
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rss-child":
        rss_child(sys.argv[2])
    else:
        main()
