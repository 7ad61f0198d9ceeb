"""The Narrow Gate questions on a native (VQ-token) toy model, measured with hooks on a HookedVLM.

- :func:`gate_knockout`: accuracy when text after the image may not attend to the end-of-image
  token (``eoi``), to every image code, to BOI + every code (the paper's "image -> text"), or, as
  controls, to one random code / one random prompt text token; all layers and each layer alone.
- :func:`code_replacement`: the object's code tokens replaced by the scene's background code (the
  native analogue of Neo et al.'s object ablation) vs as many random background cells replaced.
- :func:`gate_attention`: per layer, how the answering position's attention splits between EOI,
  BOI, the object's codes, the other codes, BOS and the other text.
- :func:`eoi_logit_lens`: how often the logit lens at EOI (final norm + unembedding, colour words
  only) names the object's colour, per layer; :func:`span_logit_lens` the same at EOI and at the
  mean image token.
- :func:`knockout_accuracy`: colour accuracy with each of :data:`KNOCKOUTS` blocked from the text after
  the image in every layer (the demo's narrow-gate bars and the gate experiment's knockout columns), on
  the colour question of :func:`colour_inputs`.

Mean-embedding ablation and the logit lens at the object's codes are :mod:`hooked_vlm.demo.effects`'
``object_ablation`` / ``object_logit_lens``, which work unchanged on a VQ model.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from jaxtyping import Bool
from torch import Tensor

from ..toy.data import COLOURS, ToyScene, make_scenes
from ..toy.tasks import ToyEncoder, accuracy, hooked_logits_fn
from .effects import accuracy_by_condition, residual_cache


def prompt_text_span(answer_position: int) -> Callable[[Any], Bool[Tensor, "batch pos"]]:
    """Text positions of the prompt other than BOS, before ``answer_position`` (the question, the
    chat words and the separator; the answering position itself excluded)."""

    def span(spans: Any) -> Tensor:
        m = spans.mask("text").clone()
        m[:, 0] = False
        m[:, answer_position:] = False
        return m

    return span


def random_one(within: Any, seed: int) -> Callable[[Any], Bool[Tensor, "batch pos"]]:
    """One random position of ``within`` per batch item (fixed draw for a given seed and batch)."""
    from hooked_vlm.analysis import random_span

    return lambda spans: random_span(spans, 1, within=within, seed=seed)


def gate_sources(q: int, seed: int) -> dict[str, Any]:
    """Knockout sources (keys) of :func:`gate_knockout`, by condition name."""
    from hooked_vlm.analysis import image_region_mask

    return {"eoi": "eoi", "image codes": "image", "boi+codes": lambda s: image_region_mask(s) & ~s.mask("eoi"),
            "eoi+codes": ["eoi", "image"], "random code": random_one("image", seed),
            "random text": random_one(prompt_text_span(q), seed)}


@torch.no_grad()
def gate_knockout(model: Any, n: int = 300, seed: int = 781, kind: str = "colour", mode: str = "mask",
                  windows: list[list[int]] | None = None, batch_size: int = 100) -> dict[str, dict[str, float]]:
    """Accuracy (%) of ``kind`` with attention from every text position after the image (prompt and
    answer, i.e. also while generating) to each source of :func:`gate_sources` knocked out, per
    window of layers (default: each layer alone, then all). {window: {condition: accuracy}}."""
    from hooked_vlm.analysis import knockout_hooks

    encoder = ToyEncoder(model.processor)
    scenes = make_scenes(n, seed)
    windows = windows or [[l] for l in range(model.cfg.n_layers)] + [list(range(model.cfg.n_layers))]
    sources = gate_sources(encoder.first_answer_position(kind), seed)
    base = accuracy(hooked_logits_fn(model), encoder, scenes, (kind,), batch_size=batch_size)[kind]
    out: dict[str, dict[str, float]] = {}
    for w in windows:
        label = "layers " + ",".join(map(str, w))
        out[label] = {"base": base}
        for name, src in sources.items():
            hooks = knockout_hooks(model, src=src, dst="after_image", layers=w, mode=mode)
            out[label][name] = accuracy(hooked_logits_fn(model, hooks), encoder, scenes, (kind,), batch_size=batch_size)[kind]
    return out


def background_token(codes: Tensor, scene: ToyScene) -> int:
    """The most frequent code token among the cells the scene's object does not touch."""
    bg = codes[scene.background_patches()]
    values, counts = bg.unique(return_counts=True)
    return int(values[counts.argmax()])


def code_replacement_hook(scenes: list[ToyScene], cells: list[list[int]], n_kinds: int) -> Callable:
    """Hook on ``vision.hook_codes`` ([image, 36] token ids, one image per batch row): the listed cells
    of each row's scene -> that image's background code."""

    def hook(codes: Tensor, hook: Any) -> Tensor:
        codes = codes.clone()
        for row in range(codes.shape[0]):
            s = row // n_kinds
            codes[row, cells[s]] = background_token(codes[row], scenes[s])
        return codes

    return hook


@torch.no_grad()
def code_replacement(model: Any, n: int = 300, seed: int = 777, kinds: tuple[str, ...] = ("colour", "shape"),
                     buffer: int = 0, batch_size: int = 100) -> dict[str, dict[str, float]]:
    """Accuracy (%) per kind: {'base', 'object', 'random'}: the object's cells (grown by ``buffer``) or as
    many random cells it does not touch get the scene's background code."""
    hooks_for = lambda chunk, cells: [("vision.hook_codes", code_replacement_hook(chunk, cells, len(kinds)))]
    return accuracy_by_condition(model, make_scenes(n, seed), kinds, hooks_for, seed, buffer, batch_size)


@torch.no_grad()
def gate_attention(model: Any, n: int = 100, seed: int = 779, kind: str = "colour") -> dict[str, list[float]]:
    """Per layer, the answering position's attention (mean over heads and scenes) to each key role."""
    encoder = ToyEncoder(model.processor)
    scenes = make_scenes(n, seed)
    b = encoder.batch(scenes, (kind,))
    q = encoder.first_answer_position(kind)
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(input_ids=b["input_ids"], pixel_values=b["pixel_values"].to(model.dtype),
                                    attention_mask=b["attention_mask"], names_filter=lambda x: x in names)
    spans = cache.spans
    image = spans.mask("image").cpu()
    obj = torch.zeros_like(image)
    for i, s in enumerate(scenes):
        obj[i, spans.positions("image", i).cpu()[s.object_patches(0)]] = True
    bos = torch.zeros_like(image)
    bos[:, 0] = True
    roles = {"eoi": spans.mask("eoi").cpu(), "boi": spans.mask("boi").cpu(), "object codes": obj,
             "other codes": image & ~obj, "BOS": bos}
    roles["other text"] = ~(roles["eoi"] | roles["boi"] | image | bos)
    out: dict[str, list[float]] = {k: [] for k in roles}
    for name in names:
        row = cache[name][:, :, q].float().mean(1).cpu()  # [scene, k]
        for key, m in roles.items():
            out[key].append(float((row * m).sum(1).mean()))
    return out


@torch.no_grad()
def eoi_logit_lens(model: Any, n: int = 200, seed: int = 778) -> dict[str, float]:
    """Percent of scenes whose top colour word under the logit lens at EOI is the object's colour, per layer."""
    return span_logit_lens(model, n, seed)["eoi"]


@torch.no_grad()
def span_logit_lens(model: Any, n: int = 200, seed: int = 778) -> dict[str, dict[str, float]]:
    """The colour logit lens (final norm + unembedding, colour words only) at EOI and at the mean image
    token (the mean of the scene's 36 code positions), per layer: percent of scenes whose top colour
    word is the object's colour. {"eoi" | "image_mean": {"embed" | "block {l}": percent}}."""
    scenes, names, cache = residual_cache(model, n, seed)
    colour_ids = torch.tensor([model.to_single_token(c) for c in COLOURS], device=model.device)
    eoi, image = cache.spans.mask("eoi"), cache.spans.mask("image")
    want = torch.tensor([list(COLOURS).index(s.objects[0].colour) for s in scenes], device=model.device)
    out: dict[str, dict[str, float]] = {"eoi": {}, "image_mean": {}}
    for name in names:
        resid = cache[name].float()
        at = {"eoi": resid[eoi],  # [scene, d] (one EOI per scene)
              "image_mean": (resid * image[..., None]).sum(1) / image.sum(1, keepdim=True)}  # [scene, d]
        layer = "embed" if name == "hook_embed" else f"block {name.split('.')[1]}"
        for where, vec in at.items():
            top = model.unembed(model.ln_final(vec.to(model.dtype)))[:, colour_ids].argmax(-1)
            out[where][layer] = 100.0 * float((top == want).float().mean())
    return out


# keys knocked out (names of gate_sources); "eoi + codes" blocks every key that can hold the image
# (BOI precedes the codes, so under causal attention it holds none): what survives it comes through the text alone
KNOCKOUTS = {"eoi": "eoi", "image->text": "boi+codes", "eoi + codes": "eoi+codes", "random code": "random code"}


def colour_inputs(encoder: ToyEncoder, scenes: list) -> dict[str, torch.Tensor]:
    """The colour question on each scene, no answer (the last position predicts the colour)."""
    ids = torch.tensor([encoder.prompt_ids("colour")] * len(scenes))
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=encoder.pixel_values([s.image for s in scenes]))


@torch.no_grad()
def knockout_accuracy(model: Any, n: int = 200, seed: int = 781, modes: tuple[str, ...] = ("mask", "zero")) -> dict[str, float]:
    """Colour accuracy (%) on ``n`` held-out scenes: ``base``, and with attention from every text position
    after the image to each of :data:`KNOCKOUTS` blocked in every layer, per knockout mode (``"eoi (mask)"``, ...)."""
    from hooked_vlm.analysis import knockout_hooks

    encoder = ToyEncoder(model.processor)
    scenes = make_scenes(n, seed)
    layers = list(range(model.cfg.n_layers))
    sources = gate_sources(encoder.first_answer_position("colour"), seed)
    acc = lambda hooks: accuracy(hooked_logits_fn(model, hooks), encoder, scenes, ("colour",), batch_size=100)["colour"]
    out = {"base": acc([])}
    for mode in modes:
        for name, key in KNOCKOUTS.items():
            out[f"{name} ({mode})"] = acc(knockout_hooks(model, src=sources[key], dst="after_image", layers=layers, mode=mode))
    return out
