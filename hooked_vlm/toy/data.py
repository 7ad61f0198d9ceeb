"""Synthetic scenes for the toy VLM: coloured shapes on a grey background, with known patch coverage.

Every scene knows which patches of the toy vision tower's grid each object covers, so ablations,
knockouts and logit lenses can be checked against ground truth. Images are uint8 RGB arrays;
:func:`pixel_values` turns them into the tensor the shipped CLIP image processor would make.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float, UInt8

IMAGE_SIZE = 48
PATCH_SIZE = 8
GRID = IMAGE_SIZE // PATCH_SIZE

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
SHAPES = ("square", "circle", "triangle")
SIZE_RANGE = (12, 18)  # object side / diameter in pixels

QUESTIONS = {
    "colour": "what colour is the shape ?",
    "shape": "what shape is it ?",
    "position": "where is the shape ?",
    "caption": "describe the image .",
}
QUESTION_KINDS = tuple(QUESTIONS)
PROMPT_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"

# CLIP normalisation (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ToyObject:
    colour: str
    shape: str
    cx: float  # centre, pixels
    cy: float
    size: int
    mask: np.ndarray = field(repr=False)  # [H, W] bool

    @property
    def vertical(self) -> str:
        return "top" if self.cy < IMAGE_SIZE / 2 else "bottom"

    @property
    def horizontal(self) -> str:
        return "left" if self.cx < IMAGE_SIZE / 2 else "right"

    @property
    def position(self) -> str:
        return f"{self.vertical} {self.horizontal}"

    def patch_coverage(self, patch_size: int = PATCH_SIZE) -> np.ndarray:
        """Fraction of each patch's pixels that the object covers, [grid, grid]."""
        g = self.mask.shape[0] // patch_size
        return self.mask.reshape(g, patch_size, g, patch_size).mean(axis=(1, 3))

    def patches(self, patch_size: int = PATCH_SIZE, min_cover: float = 0.0, buffer: int = 0) -> list[int]:
        """Row-major indices of the patches the object covers (> min_cover), grown by ``buffer`` cells."""
        cover = self.patch_coverage(patch_size) > min_cover
        if buffer:
            grown = cover.copy()
            g = cover.shape[0]
            for r, c in zip(*np.nonzero(cover)):
                grown[max(r - buffer, 0): min(r + buffer + 1, g), max(c - buffer, 0): min(c + buffer + 1, g)] = True
            cover = grown
        return [int(i) for i in np.flatnonzero(cover)]


@dataclass
class ToyScene:
    image: np.ndarray = field(repr=False)  # [H, W, 3] uint8
    objects: list[ToyObject]

    def pil(self):
        from PIL import Image

        return Image.fromarray(self.image)

    def answer(self, kind: str) -> str:
        o = self.objects[0]
        if kind == "colour":
            return o.colour
        if kind == "shape":
            return o.shape
        if kind == "position":
            return o.position
        if kind == "caption":
            return " and ".join(f"a {x.colour} {x.shape} in the {x.position}" for x in self.objects)
        raise ValueError(f"unknown question kind {kind!r}; kinds: {', '.join(QUESTION_KINDS)}")

    def object_patches(self, i: int = 0, buffer: int = 0) -> list[int]:
        return self.objects[i].patches(buffer=buffer)

    def background_patches(self) -> list[int]:
        covered = set().union(*(o.patches() for o in self.objects))
        return [p for p in range(GRID * GRID) if p not in covered]


def prompt(kind: str) -> str:
    """The chat prompt for one question kind (LLaVA-1.5 style, one ``<image>`` placeholder)."""
    return PROMPT_TEMPLATE.format(question=QUESTIONS[kind])


def shape_mask(shape: str, cx: float, cy: float, size: int, image_size: int = IMAGE_SIZE) -> np.ndarray:
    ys, xs = np.mgrid[0:image_size, 0:image_size] + 0.5
    h = size / 2
    if shape == "square":
        return (np.abs(xs - cx) <= h) & (np.abs(ys - cy) <= h)
    if shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= h**2
    if shape == "triangle":  # apex up
        t = (ys - (cy - h)) / size  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(xs - cx) <= t * h)
    raise ValueError(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")


def make_scene(rng: np.random.Generator, n_objects: int = 1, noise: float | None = None,
               colour: str | None = None, shape: str | None = None, image_size: int = IMAGE_SIZE) -> ToyScene:
    """One scene: ``n_objects`` non-overlapping shapes on a grey (optionally noisy) background.

    Centres stay 3 px away from the image's midlines so that the position answer is unambiguous.
    """
    if noise is None:
        noise = float(rng.choice([0.0, 8.0, 16.0]))
    base = rng.uniform(100, 150)
    img = np.full((image_size, image_size, 3), base) + rng.normal(0, noise, (image_size, image_size, 3)) * (noise > 0)
    objects: list[ToyObject] = []
    taken = np.zeros((image_size, image_size), dtype=bool)
    for k in range(n_objects):
        for _ in range(100):
            size = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
            lo, hi = size / 2 + 1, image_size - size / 2 - 1
            cx, cy = rng.uniform(lo, hi, size=2)
            if min(abs(cx - image_size / 2), abs(cy - image_size / 2)) < 3:
                continue
            sh = shape if (shape is not None and k == 0) else str(rng.choice(SHAPES))
            m = shape_mask(sh, cx, cy, size, image_size)
            if (m & _dilate(taken)).any():
                continue
            col = colour if (colour is not None and k == 0) else str(rng.choice(list(COLOURS)))
            rgb = np.array(COLOURS[col]) + rng.normal(0, 8, 3)
            img[m] = rgb + rng.normal(0, noise / 2, (int(m.sum()), 3)) * (noise > 0)
            taken |= m
            objects.append(ToyObject(col, sh, float(cx), float(cy), size, m))
            break
        else:
            raise RuntimeError(f"could not place {n_objects} objects without overlap")
    return ToyScene(np.clip(img, 0, 255).astype(np.uint8), objects)


def _dilate(m: np.ndarray, r: int = 2) -> np.ndarray:
    out = m.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(m, dy, 0), dx, 1)
    return out


def make_scenes(n: int, seed: int, **kwargs) -> list[ToyScene]:
    rng = np.random.default_rng(seed)
    return [make_scene(rng, **kwargs) for _ in range(n)]


def pixel_values(images: list[UInt8[np.ndarray, "h w 3"]], mean: tuple[float, ...] = CLIP_MEAN,
                 std: tuple[float, ...] = CLIP_STD, scale: float | None = None) -> Float[torch.Tensor, "n 3 h w"]:
    """uint8 images -> normalised pixel values (what a processor gives for same-size images, no resizing):
    ``(x * scale - mean) / std``; the defaults are the toy LLaVA's CLIP processor (scale 1/255)."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    x = x / 255.0 if scale is None else x * scale
    mean_ = torch.tensor(mean)[None, :, None, None]
    std_ = torch.tensor(std)[None, :, None, None]
    return (x - mean_) / std_


#: vocabulary of the word-level tokenizer (special tokens first)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
WORDS = sorted({w for q in QUESTIONS.values() for w in q.split()} | {"user", "assistant", ":", "a", "in", "the", "and",
               "top", "bottom", "left", "right"} | set(COLOURS) | set(SHAPES))
VOCAB = SPECIAL_TOKENS + WORDS
