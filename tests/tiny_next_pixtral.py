"""Tiny random LLaVA-NeXT, LLaVA-OneVision, Pixtral (LLaVA form) and Mistral3 checkpoints, built offline.

Each ``*_case()`` returns (folder, hf_model, inputs) with a batch of 2 (left padding, images of
different sizes) that HF's forward accepts: the contract of tests/test_parity.py's CASES.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests.tiny import BOS, IMAGE_TOKEN, PAD, VOCAB, Built, llama_text_config, load, pad_rows  # noqa: F401

IMG_BREAK = 101
IMG_END = 102
VIDEO_TOKEN = 103
PINPOINTS = [[8, 8], [8, 16], [16, 8], [16, 16], [8, 24], [24, 8]]


def clip_vision(**overrides: Any) -> dict:
    cfg = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=48, num_hidden_layers=3,
               num_attention_heads=4, image_size=8, patch_size=2, num_channels=3, projection_dim=16)
    cfg.update(overrides)
    return cfg


def siglip_vision(**overrides: Any) -> dict:
    cfg = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=48, num_hidden_layers=3,
               num_attention_heads=4, image_size=8, patch_size=2, num_channels=3, vision_use_head=False)
    cfg.update(overrides)
    return cfg


def pixtral_vision(**overrides: Any) -> dict:
    cfg = dict(model_type="pixtral", hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
               head_dim=8, image_size=16, patch_size=2, num_channels=3, hidden_act="silu")
    cfg.update(overrides)
    return cfg


def _save(config: Any, model_cls: Any, prefix: str, seed: int) -> tuple[Path, Any]:
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: perturb them so they are tested
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "layrnorm" in name or "ln_pre" in name:
                p.add_(torch.randn_like(p) * 0.1)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    model.save_pretrained(folder)
    return folder, model


def make_llava_next(text: dict | None = None, vision: dict | None = None, seed: int = 0, **top: Any):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    kwargs = dict(text_config=text or llama_text_config(model_type="mistral", num_key_value_heads=2, sliding_window=4096),
                  vision_config=vision or clip_vision(), image_token_id=IMAGE_TOKEN, vision_feature_layer=-2,
                  vision_feature_select_strategy="default", image_grid_pinpoints=PINPOINTS)
    kwargs.update(top)
    return _save(LlavaNextConfig(**kwargs), LlavaNextForConditionalGeneration, "tiny_next_", seed)


def make_onevision(text: dict | None = None, vision: dict | None = None, seed: int = 0, **top: Any):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    kwargs = dict(text_config=text or llama_text_config(model_type="qwen2", num_key_value_heads=2),
                  vision_config=vision or siglip_vision(), image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN,
                  vision_feature_layer=-1, vision_feature_select_strategy="full", image_grid_pinpoints=PINPOINTS)
    kwargs.update(top)
    return _save(LlavaOnevisionConfig(**kwargs), LlavaOnevisionForConditionalGeneration, "tiny_ov_", seed)


def make_pixtral_llava(text: dict | None = None, vision: dict | None = None, seed: int = 0, **top: Any):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    kwargs = dict(text_config=text or llama_text_config(model_type="mistral", num_key_value_heads=2, sliding_window=4096),
                  vision_config=vision or pixtral_vision(), image_token_id=IMAGE_TOKEN, vision_feature_layer=-1,
                  vision_feature_select_strategy="full", projector_hidden_act="gelu")
    kwargs.update(top)
    return _save(LlavaConfig(**kwargs), LlavaForConditionalGeneration, "tiny_pixtral_", seed)


def make_mistral3(text: dict | None = None, vision: dict | None = None, seed: int = 0, **top: Any):
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    kwargs = dict(text_config=text or llama_text_config(model_type="mistral", num_key_value_heads=2, sliding_window=4096),
                  vision_config=vision or pixtral_vision(), image_token_id=IMAGE_TOKEN, vision_feature_layer=-1,
                  spatial_merge_size=2, tie_word_embeddings=False)
    kwargs.update(top)
    return _save(Mistral3Config(**kwargs), Mistral3ForConditionalGeneration, "tiny_mistral3_", seed)


def _rows(token_runs: list[list[list[int]]], g: torch.Generator, text_len: int = 5) -> list[list[int]]:
    """One prompt per item: BOS, then (2 words + image tokens) per image, then text."""
    rows = []
    for runs in token_runs:
        ids = [BOS]
        for run in runs:
            ids += torch.randint(3, 90, (2,), generator=g).tolist() + run
        rows.append(ids + torch.randint(3, 90, (text_len,), generator=g).tolist())
    return rows


def anyres_batch(hf: Any, image_sizes: list[tuple[int, int]], per_item: list[int], pad_left: list[int], seed: int = 0,
                 with_batch_num_images: bool = False) -> dict:
    """Tiles [n_images, max_tiles, 3, s, s] and image_sizes; token counts taken from HF's own packing."""
    g = torch.Generator().manual_seed(seed)
    s = hf.config.vision_config.image_size
    sizes = torch.tensor(image_sizes)
    pixel_values = torch.randn(len(image_sizes), 7, 3, s, s, generator=g)
    extra = {"batch_num_images": torch.tensor(per_item)} if with_batch_num_images else {}
    with torch.no_grad():
        feats = hf.model.get_image_features(pixel_values, sizes, **extra).pooler_output
    counts = iter([f.shape[0] for f in feats])
    runs = [[[IMAGE_TOKEN] * next(counts) for _ in range(k)] for k in per_item]
    input_ids, mask = pad_rows(_rows(runs, g), pad_left)
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, image_sizes=sizes, **extra)


def pixtral_batch(hf: Any, image_sizes: list[tuple[int, int]], per_item: list[int], pad_left: list[int],
                  seed: int = 0, merge: int = 1) -> dict:
    """Images padded to the largest size; [IMG] x cols + [IMG_BREAK] per row, the last one [IMG_END]."""
    g = torch.Generator().manual_seed(seed)
    p = hf.config.vision_config.patch_size * merge
    sizes = torch.tensor(image_sizes)
    h_max, w_max = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    pixel_values = torch.zeros(len(image_sizes), 3, h_max, w_max)
    for i, (h, w) in enumerate(image_sizes):
        pixel_values[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
    grids = iter([(h // p, w // p) for h, w in image_sizes])
    runs = []
    for k in per_item:
        item = []
        for _ in range(k):
            r, c = next(grids)
            toks = ([IMAGE_TOKEN] * c + [IMG_BREAK]) * r
            item.append(toks[:-1] + [IMG_END])
        runs.append(item)
    input_ids, mask = pad_rows(_rows(runs, g), pad_left)
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, image_sizes=sizes)


def next_case():
    folder, hf = make_llava_next()
    return folder, hf, anyres_batch(hf, [(8, 13), (15, 6), (20, 21)], per_item=[1, 2], pad_left=[4, 0])


def onevision_case():
    folder, hf = make_onevision()
    return folder, hf, anyres_batch(hf, [(8, 13), (15, 6), (20, 21)], per_item=[1, 2], pad_left=[4, 0],
                                    with_batch_num_images=True)


def onevision_single_case():
    """Every item holds one image: all tiled (no batch_num_images given, as HF's backward-compatible path)."""
    folder, hf = make_onevision(vision_aspect_ratio="anyres_max_1")
    return folder, hf, anyres_batch(hf, [(8, 13), (24, 7)], per_item=[1, 1], pad_left=[3, 0])


def pixtral_case():
    folder, hf = make_pixtral_llava()
    return folder, hf, pixtral_batch(hf, [(16, 10), (8, 16), (6, 6)], per_item=[1, 2], pad_left=[3, 0])


def mistral3_case():
    folder, hf = make_mistral3()
    return folder, hf, pixtral_batch(hf, [(16, 8), (8, 12), (4, 4)], per_item=[1, 2], pad_left=[3, 0], merge=2)


# ----------------------------------------------------------------------------- offline HF processors
WORDS = ["<pad>", "<s>", "</s>", "<unk>", "hello", "world", "what", "is", "this", "?", "a", "picture", "of"]
SPECIAL = {"<image>": IMAGE_TOKEN, "[IMG]": IMAGE_TOKEN + 4, "[IMG_BREAK]": IMG_BREAK, "[IMG_END]": IMG_END,
           "<video>": VIDEO_TOKEN}


def offline_tokenizer(image_token: str = "<image>") -> Any:
    """A WordLevel tokenizer whose image placeholder is the tiny models' IMAGE_TOKEN (ids < VOCAB)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    specials = dict(SPECIAL)
    specials[image_token], specials["<image>" if image_token != "<image>" else "[IMG]"] = IMAGE_TOKEN, IMAGE_TOKEN + 4
    vocab.update(specials)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    assert tok.convert_tokens_to_ids(image_token) == IMAGE_TOKEN
    return tok


def next_processor() -> Any:
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 8}, crop_size={"height": 8, "width": 8},
                                    image_grid_pinpoints=PINPOINTS)
    return LlavaNextProcessor(image_processor=ip, tokenizer=offline_tokenizer(), patch_size=2,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              image_token="<image>")


def onevision_processor(aspect: str = "anyres_max_9") -> Any:
    """LlavaOnevisionProcessor without a video processor (its class lookup needs torchvision; images only)."""
    from transformers import LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor

    class ImagesOnlyOnevisionProcessor(LlavaOnevisionProcessor):
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ip = LlavaOnevisionImageProcessorPil(size={"height": 8, "width": 8}, image_grid_pinpoints=PINPOINTS)
    return ImagesOnlyOnevisionProcessor(image_processor=ip, tokenizer=offline_tokenizer(), num_image_tokens=16,
                                        vision_feature_select_strategy="full", image_token="<image>",
                                        video_token="<video>", vision_aspect_ratio=aspect)


def pixtral_processor(spatial_merge_size: int = 1, longest_edge: int = 16) -> Any:
    """The real PixtralProcessor class. Its module imports the torchvision image processor only for
    ``get_resize_output_image_size``; without torchvision we hand it the PIL module's identical function."""
    import sys
    import types

    from transformers import PixtralImageProcessorPil
    from transformers.models.pixtral import image_processing_pil_pixtral as pil

    name = "transformers.models.pixtral.image_processing_pixtral"
    try:
        __import__(name)
    except ImportError:
        shim = types.ModuleType(name)
        shim.get_resize_output_image_size = pil.get_resize_output_image_size
        sys.modules[name] = shim
    from transformers.models.pixtral.processing_pixtral import PixtralProcessor

    ip = PixtralImageProcessorPil(size={"longest_edge": longest_edge}, patch_size=2)
    return PixtralProcessor(image_processor=ip, tokenizer=offline_tokenizer("[IMG]"), patch_size=2,
                            spatial_merge_size=spatial_merge_size, image_token="[IMG]",
                            image_break_token="[IMG_BREAK]", image_end_token="[IMG_END]")


def pil_image(h: int, w: int, seed: int) -> Any:
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def select_best(h: int, w: int) -> tuple[int, int]:
    """HF's choice of tiled resolution (height, width) for an (h, w) image among PINPOINTS."""
    from transformers.image_processing_utils import select_best_resolution

    return select_best_resolution([h, w], PINPOINTS)


# ----------------------------------------------------------------------------- cached factories (tests/tiny.py: Built)
# One build per family, loaded with the family's offline processor; unpadded: two images of one size.
@functools.lru_cache(maxsize=None)
def llava_next() -> Built:
    folder, hf, inputs = next_case()
    return load(folder, hf, inputs, anyres_batch(hf, [(8, 13), (8, 13)], [1, 1], [0, 0], seed=1), next_processor())


@functools.lru_cache(maxsize=None)
def onevision() -> Built:
    folder, hf, inputs = onevision_case()
    unpadded = anyres_batch(hf, [(8, 13), (8, 13)], [1, 1], [0, 0], seed=1, with_batch_num_images=True)
    return load(folder, hf, inputs, unpadded, onevision_processor())


@functools.lru_cache(maxsize=None)
def pixtral() -> Built:
    folder, hf, inputs = pixtral_case()
    return load(folder, hf, inputs, pixtral_batch(hf, [(16, 10), (16, 10)], [1, 1], [0, 0], seed=1), pixtral_processor())


@functools.lru_cache(maxsize=None)
def mistral3() -> Built:
    folder, hf, inputs = mistral3_case()
    unpadded = pixtral_batch(hf, [(16, 8), (16, 8)], [1, 1], [0, 0], seed=1, merge=2)
    return load(folder, hf, inputs, unpadded, pixtral_processor(spatial_merge_size=2))
