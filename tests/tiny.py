"""Tiny random HF checkpoints built offline (no downloads), shared by the tests.

Every family has ONE cached factory returning a :class:`Built` (folder, hf, model, inputs, unpadded):
``llava(**variant)`` here, ``qwen`` / ``idefics`` in tiny_qwen_idefics, ``llava_next`` / ``onevision`` /
``pixtral`` / ``mistral3`` in tiny_next_pixtral, ``chameleon`` / ``emu3`` / ``janus`` in tiny_native.
Builds are cached with functools.lru_cache, so parity, hooks, span and error tests in different files
share one model per variant. Do not mutate what they return (copy a dict before editing it).
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch

VOCAB = 120
IMAGE_TOKEN = 100
PAD = 0
BOS = 1
EOS = 2


def llama_text_config(**overrides: Any) -> dict:
    cfg = dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, pad_token_id=PAD,
               bos_token_id=BOS, eos_token_id=EOS, rms_norm_eps=1e-5)
    cfg.update(overrides)
    return cfg


def clip_vision_config(**overrides: Any) -> dict:
    cfg = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=48, num_hidden_layers=3,
               num_attention_heads=4, image_size=8, patch_size=2, num_channels=3, projection_dim=16)
    cfg.update(overrides)
    return cfg


def make_llava(folder: Path | None = None, text: dict | None = None, vision: dict | None = None, seed: int = 0,
               **top: Any) -> tuple[Path, Any]:
    """Save a tiny random LlavaForConditionalGeneration; returns (folder, hf_model in eval mode)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    kwargs = dict(text_config=text or llama_text_config(), vision_config=vision or clip_vision_config(),
                  image_token_id=IMAGE_TOKEN, vision_feature_layer=-2, vision_feature_select_strategy="default")
    kwargs.update(top)
    config = LlavaConfig(**kwargs)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: perturb them so they are tested
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "layrnorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny_llava_"))
    model.save_pretrained(folder)
    return folder, model


def pad_rows(rows: list[list[int]], pad_left: list[int], right: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for token rows padded with PAD to one length (+ pad_left[i] extra pads)."""
    length = max(len(r) + p for r, p in zip(rows, pad_left))
    input_ids = torch.full((len(rows), length), PAD)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        start = 0 if right else length - len(r)
        input_ids[i, start:start + len(r)] = torch.tensor(r)
        mask[i, start:start + len(r)] = 1
    return input_ids, mask


def image_tokens_per_image(hf_model: Any) -> int:
    vc = hf_model.config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2
    return n + (1 if hf_model.config.vision_feature_select_strategy == "full" else 0)


def llava_batch(hf_model: Any, prompts_images: list[int], pad_left: list[int], seed: int = 0, text_len: int = 5,
                right: bool = False):
    """input_ids/attention_mask/pixel_values for a batch: item i has prompts_images[i] images and pad_left[i] pads
    (on the right instead when ``right``)."""
    g = torch.Generator().manual_seed(seed)
    n_img = image_tokens_per_image(hf_model)
    rows = []
    for k in prompts_images:
        ids = [BOS]
        for _ in range(k):
            ids += torch.randint(3, 90, (2,), generator=g).tolist() + [IMAGE_TOKEN] * n_img
        ids += torch.randint(3, 90, (text_len,), generator=g).tolist()
        rows.append(ids)
    input_ids, mask = pad_rows(rows, pad_left, right=right)
    vc = hf_model.config.vision_config
    pixel_values = torch.randn(sum(prompts_images), 3, vc.image_size, vc.image_size, generator=g)
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values)


WORDS = ["USER:", "ASSISTANT:", "what", "is", "this", "?", "a", "the", "red", "green", "blue", "circle", "square",
         "image", "describe", "color", "shape", "it", "of", "in"]


def word_vocab(special: dict[str, int], size: int) -> dict[str, int]:
    """A WordLevel vocabulary of ``size`` ids: the ``special`` tokens at their ids, WORDS from id 4, ``w{i}`` elsewhere."""
    vocab = dict(special)
    for i, w in enumerate(WORDS):
        vocab[w] = 4 + i
    taken = set(vocab.values())
    for i in range(size):
        if i not in taken:
            vocab[f"w{i}"] = i
    return vocab


def word_tokenizer():
    """A WordLevel tokenizer over VOCAB ids: <pad>=0, <s>=1, </s>=2, words, <image>=IMAGE_TOKEN."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": 3}
    for i, w in enumerate(WORDS):
        vocab[w] = 4 + i
    for i in range(4 + len(WORDS), VOCAB):
        vocab.setdefault(f"w{i}", i)
    vocab = {k: v for k, v in vocab.items() if v != IMAGE_TOKEN}
    vocab["<image>"] = IMAGE_TOKEN
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})


def save_llava_processor(folder: Path, image_size: int = 8, patch_size: int = 2, strategy: str = "default"):
    """A real LlavaProcessor (word tokenizer + CLIP image processor) saved beside a tiny checkpoint."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=word_tokenizer(), patch_size=patch_size,
                               vision_feature_select_strategy=strategy, num_additional_image_tokens=1,
                               image_token="<image>")
    processor.save_pretrained(folder)
    return processor


def pil_image(seed: int, size: int = 24):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


# ---------------------------------------------------------------- the shared, cached factories
class Built(NamedTuple):
    """A tiny checkpoint and our conversion of it."""

    folder: Path  # the save_pretrained folder (processor files beside it where the family has one offline)
    hf: Any  # the HF model, eval mode
    model: Any  # HookedVLM.from_pretrained(folder)
    inputs: dict  # a padded batch (>= 2 items) HF's forward accepts
    unpadded: dict  # a batch of >= 2 items of equal length: attention_mask all ones (SDPA's is_causal branch)


def checked(built: Built) -> Built:
    """The batches are what the tests rely on: ``inputs`` padded, ``unpadded`` not, both with >= 2 items."""
    assert built.inputs["input_ids"].shape[0] >= 2 and not bool(built.inputs["attention_mask"].bool().all())
    assert built.unpadded["input_ids"].shape[0] >= 2 and bool(built.unpadded["attention_mask"].bool().all())
    return built


def load(folder: Path, hf: Any, inputs: dict, unpadded: dict, processor: Any = "auto") -> Built:
    """Convert the checkpoint in ``folder`` (with ``processor``, or the one saved beside it)."""
    from hooked_vlm import HookedVLM

    return checked(Built(folder, hf, HookedVLM.from_pretrained(str(folder), processor=processor), inputs, unpadded))


def _frozen(**kwargs: Any) -> str:
    return json.dumps(kwargs, sort_keys=True)


@functools.lru_cache(maxsize=None)
def _llava_checkpoint(key: str) -> tuple[Path, Any, Any]:
    from hooked_vlm import HookedVLM

    spec = json.loads(key)
    folder, hf = make_llava(text=spec["text"], vision=spec["vision"], seed=spec["seed"], **spec["top"])
    vc = hf.config.vision_config
    save_llava_processor(folder, image_size=vc.image_size, patch_size=vc.patch_size,
                         strategy=hf.config.vision_feature_select_strategy)
    return folder, hf, HookedVLM.from_pretrained(str(folder))


@functools.lru_cache(maxsize=None)
def _llava_built(key: str, images: tuple[int, ...], pads: tuple[int, ...], right: bool, text_len: int) -> Built:
    folder, hf, model = _llava_checkpoint(key)
    inputs = llava_batch(hf, list(images), list(pads), right=right, text_len=text_len)
    unpadded = llava_batch(hf, [1, 1], [0, 0], seed=1, text_len=text_len)
    return checked(Built(folder, hf, model, inputs, unpadded))


def llava(text: dict | None = None, vision: dict | None = None, images: tuple[int, ...] = (1, 1, 2),
          pads: tuple[int, ...] = (3, 0, 0), right: bool = False, text_len: int = 5, seed: int = 0, **top: Any) -> Built:
    """A tiny LLaVA (saved with its LlavaProcessor) and its conversion, built once per (text, vision, seed, top).

    ``images[i]`` images and ``pads[i]`` pads in batch item i (on the right when ``right``); ``text_len``
    words after the images. Models are shared between batches that differ only in these.
    """
    key = _frozen(text=text or llama_text_config(), vision=vision or clip_vision_config(), seed=seed, top=top)
    return _llava_built(key, tuple(images), tuple(pads), right, text_len)


# ---------------------------------------------------------------- comparison helpers for the family test files
def real_positions(inputs: dict) -> torch.Tensor:
    """[batch, pos] True at the real (non-pad) tokens of a batch."""
    return inputs["attention_mask"].bool()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    """max |a - b|, over the positions ``where`` when given."""
    return ((a - b) if where is None else (a - b)[where]).abs().max().item()


def pattern_hooks(model: Any) -> list:
    """Identity hooks on every layer's hook_pattern: the explicit attention path in every layer."""
    return [(f"blocks.{l}.attn.hook_pattern", lambda t, hook: t) for l in range(model.cfg.n_layers)]


def hf_final_norm(hf: Any) -> Any:
    """HF's final norm of the language model (its input is the last block's output)."""
    decoder = hf.get_decoder()
    if not hasattr(decoder, "norm") and hasattr(getattr(decoder, "model", None), "norm"):
        decoder = decoder.model  # Llama 4's get_decoder() is the Llama4ForCausalLM, its text model inside
    norm = getattr(decoder, "norm", None)
    if norm is None:  # LFM2 names its final norm embedding_norm
        norm = getattr(decoder, "embedding_norm", None)
    if norm is None:
        raise AttributeError(f"{type(hf).__name__}: its decoder {type(hf.get_decoder()).__name__} has no .norm")
    return norm


@contextlib.contextmanager
def final_norm_input(hf: Any):
    """While active, ``seen["x"]`` is the input of HF's final LM norm in the latest forward: the last block's
    ``hook_resid_post`` (HF's ``hidden_states[-1]`` is after that norm, so the last block is compared with this)."""
    seen: dict = {}
    handle = hf_final_norm(hf).register_forward_pre_hook(lambda module, args: seen.__setitem__("x", args[0]))
    try:
        yield seen
    finally:
        handle.remove()
