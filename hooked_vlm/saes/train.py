"""Train a SAELens SAE on a VLM's activations: our activation store, SAELens's trainer.

SAELens's ``LanguageModelSAETrainingRunner`` builds its own token-only ``ActivationsStore``; its
``SAETrainer`` takes any ``DataProvider`` (an iterator of ``[batch, d_in]`` tensors). So we build
the training SAE the way the runner does (``TrainingSAE.from_dict(TrainingSAEConfig.from_dict(...))``),
hand SAETrainer one of our stores (:mod:`hooked_vlm.saes.store`, :mod:`hooked_vlm.saes.shards`), and
save the result with ``save_inference_model`` (SAELens's own folder format: ``cfg.json`` +
``sae_weights.safetensors``, loadable with ``SAE.load_from_disk``). The SAE math is SAELens's.

Needs ``sae-lens`` (``pip install hooked_vlm[sae]``; it resolves transformer-lens 3.9).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .load import load_sae, require_sae_lens
from .store import ActivationStore

__all__ = ["architectures", "load_sae", "make_training_sae", "train_sae"]


def architectures() -> list[str]:
    """SAE architectures SAELens can train (its training registry)."""
    require_sae_lens()
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    return sorted(SAE_TRAINING_CLASS_REGISTRY)


def make_training_sae(d_in: int, d_sae: int, architecture: str = "standard", seed: int = 0, device: str = "cpu",
                      metadata: dict | None = None, **sae_kwargs: Any) -> Any:
    """A fresh SAELens ``TrainingSAE`` (initialised under ``torch.manual_seed(seed)``).

    ``sae_kwargs`` are the architecture's config fields (``l1_coefficient`` for standard, ``k`` for
    topk / batchtopk, ``decoder_init_norm``, ``normalize_activations``, ...).
    """
    require_sae_lens()
    from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig

    known = architectures()
    if architecture not in known:
        raise ValueError(f"unknown SAE architecture {architecture!r}; SAELens trains: {', '.join(known)}")
    cfg = TrainingSAEConfig.from_dict(dict(architecture=architecture, d_in=d_in, d_sae=d_sae, device=device,
                                           **sae_kwargs))
    for key, value in (metadata or {}).items():
        cfg.metadata[key] = value
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TrainingSAE.from_dict(cfg.to_dict())


def train_sae(store: ActivationStore, d_sae: int, total_training_samples: int, architecture: str = "standard",
              lr: float = 3e-4, seed: int = 0, device: str = "cpu", out: str | Path | None = None,
              lr_warm_up_steps: int = 0, lr_decay_steps: int = 0, lr_scheduler_name: str = "constant",
              dead_feature_window: int = 1000, feature_sampling_window: int = 2000,
              metadata: dict | None = None, **sae_kwargs: Any) -> tuple[Any, Any]:
    """Train an SAE on ``store`` with SAELens's ``SAETrainer``; returns (training SAE, trainer).

    ``lr_end`` is ``lr / 10`` (the default of SAELens's runner config; only cosine schedules use it).

    ``store`` must loop (``n_epochs=None``). The SAE's metadata records the hook, the spans and anything in
    ``metadata`` (e.g. ``model_name``). With ``out`` the SAE is saved in SAELens's inference format plus
    ``sparsity.safetensors`` and ``hooked_vlm_training.json`` (the settings and the wall time).
    """
    require_sae_lens()
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.constants import SPARSITY_FILENAME
    from sae_lens.training.sae_trainer import SAETrainer
    from safetensors.torch import save_file

    if store.n_epochs is not None:
        raise ValueError("SAETrainer draws batches until total_training_samples: build the store with n_epochs=None")
    if total_training_samples < store.train_batch_size:
        raise ValueError(f"total_training_samples ({total_training_samples}) is less than one batch "
                         f"({store.train_batch_size})")
    meta = dict(hook_name=store.hook_name, hooked_vlm_spans=list(store.spans), model_class_name="HookedVLM",
                **(metadata or {}))
    sae = make_training_sae(store.d_in, d_sae, architecture, seed, device, meta, **sae_kwargs)
    cfg = SAETrainerConfig(total_training_samples=total_training_samples, train_batch_size_samples=store.train_batch_size,
                           lr=lr, lr_end=lr / 10, lr_warm_up_steps=lr_warm_up_steps, lr_decay_steps=lr_decay_steps,
                           lr_scheduler_name=lr_scheduler_name, device=device, dead_feature_window=dead_feature_window,
                           feature_sampling_window=feature_sampling_window, logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=store)
    start = time.perf_counter()
    sae = trainer.fit()
    seconds = time.perf_counter() - start
    if out is not None:
        out = Path(out)
        sae.save_inference_model(str(out))
        save_file({"sparsity": trainer.log_feature_sparsity}, str(out / SPARSITY_FILENAME))
        record = dict(architecture=architecture, d_in=store.d_in, d_sae=d_sae, total_training_samples=total_training_samples,
                      train_batch_size=store.train_batch_size, buffer_size=store.buffer_size, lr=lr, seed=seed,
                      lr_warm_up_steps=lr_warm_up_steps, lr_decay_steps=lr_decay_steps,
                      lr_scheduler_name=lr_scheduler_name, sae_kwargs=sae_kwargs, hook_name=store.hook_name,
                      spans=list(store.spans), train_seconds=round(seconds, 1), threads=torch.get_num_threads(),
                      steps=trainer.n_training_steps, **(metadata or {}))
        (out / "hooked_vlm_training.json").write_text(json.dumps(record, indent=1, default=str))
    return sae, trainer
