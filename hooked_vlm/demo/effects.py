"""The known effects of the toy LLaVA, measured with plain hooks (no analysis helpers needed).

- :func:`object_ablation`: Neo et al.'s object-patch mean ablation at the LM input vs the same
  number of random background patches, scored by exact-match accuracy.
- :func:`object_logit_lens`: final norm + unembedding on the residual at the object's patches,
  restricted to the colour words: how often the object's colour is the top colour word, per layer.
- :func:`background_colour_probe`: how well a linear probe reads the object's colour from the LM
  input at the patches the object does *not* touch (what an object-patch ablation leaves behind).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from ..toy.data import COLOURS, GRID, ToyScene, make_scenes
from ..toy.tasks import ToyEncoder, accuracy, hooked_logits_fn

N_PATCHES = GRID * GRID


@torch.no_grad()
def mean_image_embedding(model: Any, encoder: ToyEncoder, scenes: list[ToyScene]) -> Float[Tensor, " d_model"]:
    """Mean projector output (``hook_image_embeds``) over all image tokens of ``scenes``."""
    b = encoder.batch(scenes, ("colour",))
    _, cache = model.run_with_cache(input_ids=b["input_ids"], pixel_values=b["pixel_values"].to(model.dtype),
                                    attention_mask=b["attention_mask"], names_filter="hook_image_embeds")
    return cache["hook_image_embeds"].float().mean(0)


def patch_sets(scenes: list[ToyScene], which: str, seed: int = 0, buffer: int = 0) -> list[list[int]]:
    """Per scene, the patches to ablate: 'object' (covered by object 0, grown by ``buffer`` cells) or
    'random' (as many patches, drawn from those the object does not cover, buffer excluded)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in scenes:
        obj = s.object_patches(0, buffer=buffer)
        if which == "object":
            out.append(obj)
        elif which == "random":
            free = [p for p in range(N_PATCHES) if p not in set(obj)]
            out.append(sorted(rng.choice(free, size=min(len(obj), len(free)), replace=False).tolist()))
        else:
            raise ValueError(f"which must be 'object' or 'random', got {which!r}")
    return out


def ablation_hook(patches: list[list[int]], mean: Tensor, n_kinds: int):
    """Hook on ``hook_image_embeds``: rows of the listed patches -> ``mean`` (one image per batch row)."""

    def hook(embeds: Tensor, hook: Any) -> Tensor:
        embeds = embeds.clone().view(-1, N_PATCHES, embeds.shape[-1])
        for row in range(embeds.shape[0]):
            idx = patches[row // n_kinds]
            embeds[row, idx] = mean.to(embeds.dtype)
        return embeds.view(-1, embeds.shape[-1])

    return hook


@torch.no_grad()
def object_ablation(model: Any, n: int = 300, seed: int = 777, kinds: tuple[str, ...] = ("colour", "shape"),
                    buffer: int = 0, batch_size: int = 100) -> dict[str, dict[str, float]]:
    """Accuracy (%) per kind: {'base', 'object', 'random'} with the mean over ``n`` other scenes."""
    mean = mean_image_embedding(model, ToyEncoder(model.processor), make_scenes(200, seed + 1))
    return accuracy_by_condition(model, make_scenes(n, seed), kinds,
                                 lambda chunk, cells: [("hook_image_embeds", ablation_hook(cells, mean, len(kinds)))],
                                 seed, buffer, batch_size)


def accuracy_by_condition(model: Any, scenes: list[ToyScene], kinds: tuple[str, ...],
                          hooks_for: Callable[[list[ToyScene], list[list[int]]], list], seed: int, buffer: int = 0,
                          batch_size: int = 100) -> dict[str, dict[str, float]]:
    """Accuracy (%) per kind under 'base' (no hooks), 'object' and 'random': ``hooks_for(chunk, cells)`` gives
    the hooks that edit, per scene of ``chunk``, the object's cells or as many random cells (:func:`patch_sets`)."""
    encoder = ToyEncoder(model.processor)
    result: dict[str, dict[str, float]] = {k: {} for k in kinds}
    for cond in ("base", "object", "random"):
        hits: dict[str, float] = {k: 0.0 for k in kinds}
        for i in range(0, len(scenes), batch_size):
            chunk = scenes[i: i + batch_size]
            hooks = [] if cond == "base" else hooks_for(chunk, patch_sets(chunk, cond, seed=seed + i, buffer=buffer))
            part = accuracy(hooked_logits_fn(model, hooks), encoder, chunk, kinds, batch_size=batch_size)
            for k in kinds:
                hits[k] += part[k] * len(chunk)
        for k in kinds:
            result[k][cond] = hits[k] / len(scenes)
    return result


@torch.no_grad()
def object_logit_lens(model: Any, n: int = 200, seed: int = 778, vocab: str = "colours") -> dict[str, float]:
    """Percent of (scene, object patch) pairs whose top token is the object's colour, per layer.

    ``vocab="colours"``: the top among the colour words; ``"all"``: the top of the whole vocabulary.
    Layers: 'embed' (LM input) and 'block {l}' (each block's output); the model's final norm and
    unembedding are applied to the residual at the object's patches (the classic logit lens).
    """
    scenes, names, cache = residual_cache(model, n, seed)
    colour_ids = torch.tensor([model.to_single_token(c) for c in COLOURS], device=model.device)
    image_pos = cache.spans.positions("image", 0)
    out = {}
    for name in names:
        resid = cache[name][:, image_pos]  # [scene, patch, d]
        logits = model.unembed(model.ln_final(resid))
        if vocab == "colours":
            top = logits[..., colour_ids].argmax(-1)  # [scene, patch] index into COLOURS
        else:
            top = logits.argmax(-1)  # [scene, patch] token id
        hits = []
        for i, s in enumerate(scenes):
            want = list(COLOURS).index(s.objects[0].colour)
            want = want if vocab == "colours" else int(colour_ids[want])
            hits += (top[i, s.object_patches(0)] == want).tolist()
        out["embed" if name == "hook_embed" else f"block {name.split('.')[1]}"] = 100.0 * float(np.mean(hits))
    return out


def residual_cache(model: Any, n: int, seed: int) -> tuple[list[ToyScene], list[str], Any]:
    """``n`` scenes asked the colour question, cached at the LM input and every block's output
    -> (scenes, those hook names, the cache)."""
    scenes = make_scenes(n, seed)
    names = ["hook_embed"] + [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    b = ToyEncoder(model.processor).batch(scenes, ("colour",))
    _, cache = model.run_with_cache(input_ids=b["input_ids"], pixel_values=b["pixel_values"].to(model.dtype),
                                    attention_mask=b["attention_mask"], names_filter=lambda x: x in names)
    return scenes, names, cache


def _positions_mask(encoder: ToyEncoder, kind: str, patches: list[list[int]], length: int) -> Tensor:
    """Bool [n, length]: the sequence positions of the given patches of each row's image."""
    ids = torch.tensor(encoder.prompt_ids(kind))
    image_pos = (ids == encoder.processor.tokenizer.convert_tokens_to_ids("<image>")).nonzero().flatten()
    m = torch.zeros(len(patches), length, dtype=torch.bool)
    for i, p in enumerate(patches):
        m[i, image_pos[p]] = True
    return m


@torch.no_grad()
def attention_flow(model: Any, n: int = 100, seed: int = 779, kind: str = "colour") -> dict[str, list[float]]:
    """Per layer, how the answering position's attention (mean over heads and scenes) splits between
    the object's patches, the other image patches, the BOS token and the other text tokens."""
    encoder = ToyEncoder(model.processor)
    scenes = make_scenes(n, seed)
    b = encoder.batch(scenes, (kind,))
    q = encoder.first_answer_position(kind)
    obj = _positions_mask(encoder, kind, [s.object_patches(0) for s in scenes], b["input_ids"].shape[1])
    image = b["input_ids"] == model.cfg.roles.image_token_id
    bos = torch.zeros_like(image)
    bos[:, 0] = True
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(input_ids=b["input_ids"], pixel_values=b["pixel_values"].to(model.dtype),
                                    attention_mask=b["attention_mask"], names_filter=lambda x: x in names)
    out: dict[str, list[float]] = {"object": [], "other image": [], "BOS": [], "other text": []}
    for name in names:
        row = cache[name][:, :, q].float().mean(1).cpu()  # [scene, k]
        for key, m in (("object", obj), ("other image", image & ~obj), ("BOS", bos), ("other text", ~image & ~bos)):
            out[key].append(float((row * m).sum(1).mean()))
    return out


@torch.no_grad()
def object_knockout(model: Any, n: int = 200, seed: int = 780, kind: str = "colour",
                    windows: list[list[int]] | None = None) -> dict[str, dict[str, float]]:
    """Accuracy (%) with attention from the answering position to the object's patches ('object'),
    to as many random background patches ('random') or to every image patch ('image') blocked
    (-inf before the softmax) in each window of layers (Neo et al.'s knockout)."""
    from hooked_vlm.analysis import knockout_hooks

    encoder = ToyEncoder(model.processor)
    scenes = make_scenes(n, seed)
    windows = windows or [[l] for l in range(model.cfg.n_layers)] + [list(range(model.cfg.n_layers))]
    length = encoder.batch(scenes, (kind,))["input_ids"].shape[1]
    obj = _positions_mask(encoder, kind, patch_sets(scenes, "object"), length)
    rnd = _positions_mask(encoder, kind, patch_sets(scenes, "random", seed=seed), length)
    img = _positions_mask(encoder, kind, [list(range(N_PATCHES))] * n, length)
    answering = torch.zeros(n, length, dtype=torch.bool)
    answering[:, encoder.first_answer_position(kind)] = True  # the row that predicts the answer word
    base = accuracy(hooked_logits_fn(model), encoder, scenes, (kind,), batch_size=n)[kind]
    out: dict[str, dict[str, float]] = {}
    for w in windows:
        label = "layers " + ",".join(map(str, w))
        out[label] = {"base": base}
        for name, src in (("object", obj), ("random", rnd), ("image", img)):
            hooks = knockout_hooks(model, src=src, dst=answering, layers=w, mode="mask")
            out[label][name] = accuracy(hooked_logits_fn(model, hooks), encoder, scenes, (kind,), batch_size=n)[kind]
    return out


@torch.no_grad()
def background_colour_probe(model: Any, n_train: int = 600, n_test: int = 300, seed: int = 785) -> float:
    """Held-out accuracy (%) of a logistic-regression probe that predicts the object's colour from the
    mean LM input (``hook_image_embeds``) over the patches the object does not touch. Chance: 16.7%.
    High means the tower spreads the colour beyond the object's patches, so a reader that pools the
    image can survive :func:`object_ablation`."""
    from sklearn.linear_model import LogisticRegression

    encoder = ToyEncoder(model.processor)

    def features(scenes: list[ToyScene]) -> tuple[np.ndarray, np.ndarray]:
        b = encoder.batch(scenes, ("colour",))
        _, cache = model.run_with_cache(input_ids=b["input_ids"], pixel_values=b["pixel_values"].to(model.dtype),
                                        attention_mask=b["attention_mask"], names_filter="hook_image_embeds")
        embeds = cache["hook_image_embeds"].float().view(len(scenes), N_PATCHES, -1).cpu()
        x = np.stack([embeds[i, s.background_patches()].mean(0).numpy() for i, s in enumerate(scenes)])
        return x, np.array([list(COLOURS).index(s.objects[0].colour) for s in scenes])

    x_train, y_train = features(make_scenes(n_train, seed))
    x_test, y_test = features(make_scenes(n_test, seed + 1))
    probe = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    return 100.0 * float(probe.score(x_test, y_test))
