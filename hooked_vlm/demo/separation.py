"""Modality separation on the shipped toys (the Narrow Gate paper's analysis 1), as the demo shows it.

:func:`separation`: on the colour question about ``n`` held-out scenes, per LM layer (each block's output, no final
norm), the median and quartiles of |cos| between one random image token and one random text token after the image of
the same scene, and the homogeneity of a 2-cluster k-means of the pooled vectors against the modality labels
(:func:`~hooked_vlm.analysis.modality_separation`). :func:`figure`: two panels over relative depth, a line per model.
The command that runs it on every toy and writes the JSON and the figure is ``python -m experiments.separation``.
"""

from __future__ import annotations

from typing import Any

import torch

from ..toy.data import make_scenes
from ..toy.tasks import ToyEncoder
from .gate_effects import colour_inputs

TOYS = ("toy-llava", "toy-chameleon", "toy-chameleon-gen")
SEED = 783


@torch.no_grad()
def separation(model: Any, n: int = 200, seed: int = SEED) -> Any:
    """Per layer: |cos| quartiles (image vs text after the image, same scene) and modality homogeneity.
    DataFrame (layer, cos_q1, cos_median, cos_q3, homogeneity, n_image, n_text)."""
    from hooked_vlm.analysis import modality_separation

    inputs = colour_inputs(ToyEncoder(model.processor), make_scenes(n, seed))
    return modality_separation(model, inputs, image_span="image", text_span="after_image", n_tokens=1, seed=seed,
                               progress=False)


def figure(frames: dict[str, Any]):
    """Two panels over relative depth: median |cos| (quartile band) and homogeneity, a line per model."""
    import matplotlib.pyplot as plt

    fig, (ax_cos, ax_hom) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for name, df in frames.items():
        depth = (df["layer"] + 1) / len(df)  # block l's output at (l + 1) / n_layers
        line, = ax_cos.plot(depth, df["cos_median"], marker="o", label=f"{name} ({len(df)} layers)")
        ax_cos.fill_between(depth, df["cos_q1"], df["cos_q3"], color=line.get_color(), alpha=0.15)
        ax_hom.plot(depth, df["homogeneity"], marker="o", color=line.get_color(), label=name)
    ax_cos.set(xlabel="relative depth (block output / number of blocks)", ylabel="|cos(image token, text token)|",
               title="image-text cosine per layer\n(median, band = quartiles)", ylim=(0, 1))
    ax_hom.set(xlabel="relative depth (block output / number of blocks)", ylabel="homogeneity of 2-means vs modality",
               title="modality separation per layer\n(1 = clusters are the modalities)", ylim=(-0.02, 1.02))
    ax_cos.legend(fontsize=8)
    fig.suptitle("Modality separation in the toy models' residual stream (colour question, held-out scenes)", fontsize=10)
    fig.tight_layout()
    return fig
