"""Train per-layer skip transcoders on a VLM: pairs of (MLP input, MLP output) rows, SAELens's trainer.

:class:`VLMPairStore` streams, at the positions of the chosen spans, the activation at ``hook_name`` (the
transcoder's input, e.g. ``blocks.l.ln2.hook_normalized``) and at ``hook_name_out`` (what it must predict,
``blocks.l.hook_mlp_out``) side by side: each row is ``[x | y]``, the ``DataProvider`` SAELens's ``SAETrainer``
consumes. SAELens 6.54 has transcoder classes for inference only (its trainer reconstructs its input), so
:func:`training_transcoder` is SAELens's ``StandardTrainingSAE`` (ReLU, L1 penalty weighted by decoder norms, its
initialisation, its trainer and optimiser) with a skip matrix ``W_skip`` and a loss on ``y``:
``|| decode(encode(x)) + x @ W_skip.T - y ||^2``. :func:`train_transcoder` saves the result as SAELens's inference
``SkipTranscoder`` (``cfg.json`` + ``sae_weights.safetensors``, ``SAE.load_from_disk`` reads it back).

Needs ``sae-lens`` (``pip install hooked_vlm[sae]``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..batches import iterate_batches
from .load import require_sae_lens
from .store import ActivationChunk, VLMActivationStore, batch_activations, check_hook, stream_activations


class VLMPairStore(VLMActivationStore):
    """Rows ``[x | y]``: ``hook_name`` (input) and ``hook_name_out`` (target) at the same positions of ``spans``."""

    def __init__(self, model: Any, dataset: Sequence[Any], hook_name: str, hook_name_out: str,
                 spans: str | Sequence[str] = "all", **kwargs: Any):
        super().__init__(model, dataset, hook_name, spans, **kwargs)
        check_hook(model, hook_name_out)
        self.hook_name_out = hook_name_out
        self._d_out: int | None = None

    @property
    def d_out(self) -> int:
        if self._d_out is None:
            head = list(iter(self.dataset))[:1]
            first = next(stream_activations(self.model, head, self.hook_name_out, self.spans, 1, progress=False))
            self._d_out = int(first.acts.shape[1])
        return self._d_out

    def epoch_chunks(self, epoch: int) -> Iterable[ActivationChunk]:
        if self._cached is not None:
            yield from self._cached
            return
        kept: list[ActivationChunk] = []
        desc = f"epoch {epoch}: {self.hook_name} -> {self.hook_name_out}"
        for idx, inputs in iterate_batches(self.model, self.dataset, self.model_batch_size, self.progress, desc):
            x = batch_activations(self.model, inputs, self.hook_name, self.spans, idx, self.dtype)
            y = batch_activations(self.model, inputs, self.hook_name_out, self.spans, idx, self.dtype)
            if not all(bool((x.index[k] == y.index[k]).all()) for k in x.index):
                raise RuntimeError("the input and output rows come from different positions")
            chunk = ActivationChunk(torch.cat([x.acts, y.acts], 1), x.index, x.roles)
            if self.cache_in_memory:
                kept.append(chunk)
            yield chunk
        if self.cache_in_memory:
            self._cached = kept


def training_transcoder(d_in: int, d_sae: int, d_out: int, l1_coefficient: float, seed: int = 0,
                        device: str = "cpu") -> Any:
    """A fresh training skip transcoder: SAELens's ``StandardTrainingSAE`` + ``W_skip`` (zeros) + a loss on y."""
    require_sae_lens()
    from sae_lens.saes.sae import TrainStepOutput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from torch import nn

    if d_out != d_in:
        raise ValueError(f"SAELens's standard training SAE decodes to its input width; d_out={d_out} != d_in={d_in}")

    class SkipTranscoderTrainingSAE(StandardTrainingSAE):
        def __init__(self, cfg: Any, use_error_term: bool = False):
            super().__init__(cfg, use_error_term)
            self.W_skip = nn.Parameter(torch.zeros(d_out, d_in, dtype=self.dtype, device=self.device))

        def training_forward_pass(self, step_input: Any) -> Any:
            x, y = step_input.sae_in.split([d_in, d_out], dim=-1)
            feature_acts, hidden_pre = self.encode_with_hidden_pre(x)
            out = self.decode(feature_acts) + x @ self.W_skip.T
            mse = self.mse_loss_fn(out, y).sum(dim=-1).mean()
            aux = self.calculate_aux_loss(step_input=dataclasses.replace(step_input, sae_in=x),
                                          feature_acts=feature_acts, hidden_pre=hidden_pre, sae_out=out)
            loss = mse + sum(aux.values())
            return TrainStepOutput(sae_in=y, sae_out=out, feature_acts=feature_acts, hidden_pre=hidden_pre, loss=loss,
                                   losses={"mse_loss": mse, **aux})

    cfg = StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=l1_coefficient, device=device,
                                    apply_b_dec_to_input=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SkipTranscoderTrainingSAE(cfg)


def to_inference(sae: Any, hook_name: str, hook_name_out: str, metadata: dict | None = None) -> Any:
    """SAELens's inference ``SkipTranscoder`` with the trained weights."""
    require_sae_lens()
    from sae_lens import SkipTranscoder, SkipTranscoderConfig

    d_in, d_sae = sae.W_enc.shape
    cfg = SkipTranscoderConfig(d_in=d_in, d_sae=d_sae, d_out=sae.W_dec.shape[1], dtype="float32",
                               device=str(sae.W_enc.device), apply_b_dec_to_input=False)
    cfg.metadata.hook_name, cfg.metadata.hook_name_out = hook_name, hook_name_out
    for k, v in (metadata or {}).items():
        cfg.metadata[k] = v
    tc = SkipTranscoder(cfg)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "W_skip"):
            getattr(tc, name).copy_(getattr(sae, name))
    return tc


def train_transcoder(store: VLMPairStore, d_sae: int, total_training_samples: int, l1_coefficient: float = 1.0,
                     lr: float = 3e-4, seed: int = 0, device: str = "cpu", out: str | Path | None = None,
                     lr_warm_up_steps: int = 0, metadata: dict | None = None) -> tuple[Any, Any]:
    """Train one skip transcoder on ``store`` with SAELens's ``SAETrainer``; returns (inference transcoder, trainer).
    With ``out`` it is saved there (SAELens's format) with ``hooked_vlm_training.json``."""
    require_sae_lens()
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    if store.n_epochs is not None:
        raise ValueError("SAETrainer draws batches until total_training_samples: build the store with n_epochs=None")
    sae = training_transcoder(store.d_in, d_sae, store.d_out, l1_coefficient, seed, device)
    cfg = SAETrainerConfig(total_training_samples=total_training_samples, train_batch_size_samples=store.train_batch_size,
                           lr=lr, lr_end=lr / 10, lr_warm_up_steps=lr_warm_up_steps, lr_decay_steps=0,
                           lr_scheduler_name="constant", device=device, dead_feature_window=1000,
                           feature_sampling_window=2000, logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=store)
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    meta = dict(hooked_vlm_spans=list(store.spans), model_class_name="HookedVLM", **(metadata or {}))
    tc = to_inference(sae, store.hook_name, store.hook_name_out, meta)
    if out is not None:
        out = Path(out)
        tc.save_model(str(out))
        record = dict(architecture="skip_transcoder", d_in=store.d_in, d_sae=d_sae, d_out=store.d_out,
                      total_training_samples=total_training_samples, train_batch_size=store.train_batch_size,
                      l1_coefficient=l1_coefficient, lr=lr, seed=seed, hook_name=store.hook_name,
                      hook_name_out=store.hook_name_out, spans=list(store.spans), train_seconds=round(seconds, 1),
                      steps=trainer.n_training_steps, **(metadata or {}))
        (out / "hooked_vlm_training.json").write_text(json.dumps(record, indent=1, default=str))
    return tc, trainer
