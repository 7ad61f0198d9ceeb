"""Shared pieces of the VQ-tokenizer families (Chameleon, Emu3): HF VQ sub-config -> VQConfig."""

from __future__ import annotations

from typing import Any

from hooked_vlm.config import VQConfig

from .base import UnsupportedConfigError


def vq_config(vq: Any, hf_class: str, code_to_token: list[int], encode: str, row_break_token_id: int | None = None) -> VQConfig:
    """The whole HF VQ config is handed to HF's own VQ module, so every field of it is honoured."""
    for name in ("base_channels",):
        if getattr(vq, name, 32) % 32:
            raise UnsupportedConfigError(f"vq_config.{name}={getattr(vq, name)} is not a multiple of 32: HF's VQ-VAE "
                                         "normalises with GroupNorm(32 groups), which cannot split it")
    conf = vq.to_dict()
    for key in ("architectures", "transformers_version", "_name_or_path", "model_type", "dtype", "torch_dtype"):
        conf.pop(key, None)
    return VQConfig(hf_class=hf_class, hf_config_class=f"{type(vq).__module__}:{type(vq).__name__}", hf_config=conf,
                    code_to_token=code_to_token, downsample=2 ** (len(vq.channel_multiplier) - 1), encode=encode,
                    row_break_token_id=row_break_token_id)


def check_codes(mapping: dict[int, int], n_codes: int, where: str) -> list[int]:
    """code -> token id dict -> a dense list; every code must have a token."""
    missing = [c for c in range(n_codes) if c not in mapping]
    if missing:
        raise UnsupportedConfigError(
            f"{where}: vocabulary_map has no token for VQ code(s) {missing[:10]}{' ...' if len(missing) > 10 else ''} "
            f"of {n_codes}; image codes would map to wrong tokens"
        )
    return [mapping[c] for c in range(n_codes)]
