"""Shared parts of the generate and GPU benchmarks: a random LLaVA-shaped checkpoint, its inputs, timers."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def build_llava(folder: Path, layers: int, hidden: int, heads: int, kv_heads: int, d_mlp: int, vocab: int,
                image_size: int = 336, patch: int = 14, vision_layers: int = 4, vision_width: int = 256,
                dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
    """Save a random LLaVA (Llama LM + CLIP tower) to ``folder``; built on ``device`` in ``dtype`` (fast on a GPU)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        text_config=dict(model_type="llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=d_mlp,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=4096),
        vision_config=dict(model_type="clip_vision_model", hidden_size=vision_width, intermediate_size=4 * vision_width,
                           num_hidden_layers=vision_layers, num_attention_heads=max(vision_width // 64, 1),
                           image_size=image_size, patch_size=patch, projection_dim=vision_width),
        image_token_id=vocab - 1, vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(folder)
    del model


def llava_inputs(hf_config, text_tokens: int, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> dict:
    """BOS + one image's placeholders + ``text_tokens`` random text ids, batch 1."""
    g = torch.Generator().manual_seed(seed)
    vc = hf_config.vision_config
    n_img = (vc.image_size // vc.patch_size) ** 2
    text = torch.randint(3, min(1000, hf_config.text_config.vocab_size - 1), (text_tokens,), generator=g).tolist()
    ids = [1] + [hf_config.image_token_id] * n_img + text
    return dict(input_ids=torch.tensor([ids], device=device),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                pixel_values=torch.randn(1, 3, vc.image_size, vc.image_size, generator=g).to(device, dtype))


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: str = "cpu") -> dict[str, float]:
    """Median seconds of each fn; the fns run in turn every repeat so load changes hit all alike."""
    for fn in fns.values():
        fn()  # warm-up
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def table(rows: list[tuple[str, str, str]], header: tuple[str, str, str] = ("measure", "ours / HF", "ratio")) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
