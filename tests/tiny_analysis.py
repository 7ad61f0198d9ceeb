"""A tiny random LLaVA with begin/end-of-image markers, for the analysis tests and docs examples.

LLaVA has no image delimiters; to exercise ``boi``/``eoi`` spans the same way as on Chameleon or
Emu3 we wrap every image in two ordinary vocabulary tokens (BOI, EOI) and declare them in the
model's TokenRoles. Everything else is the unmodified tiny LLaVA of tests/tiny.py.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

from tests import tiny

BOI, EOI = 94, 95
WORDS = ["red", "green", "blue", "circle", "square", "triangle", "what", "colour", "shape", "is", "the", "this", "a",
         "?", "USER:", "ASSISTANT:", "It"]


def make_processor(image_size: int = 8, patch_size: int = 2):
    """An offline LlavaProcessor over the tiny vocabulary: a WordLevel tokenizer (whitespace words,
    ``<image>`` = 100, ``<boi>`` = 94, ``<eoi>`` = 95) and a CLIP image processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

    vocab = {"<pad>": tiny.PAD, "<s>": tiny.BOS, "</s>": tiny.EOS, "<image>": tiny.IMAGE_TOKEN, "<boi>": BOI, "<eoi>": EOI}
    vocab.update({w: 3 + i for i, w in enumerate(WORDS)})
    used = set(vocab.values())
    vocab.update({f"w{i}": i for i in range(tiny.VOCAB) if i not in used})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>", "<boi>", "<eoi>"]})
    images = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    return LlavaProcessor(image_processor=images, tokenizer=fast, patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token="<image>")


def random_image(seed: int, size: int = 8):
    import numpy as np
    from PIL import Image

    return Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8"))


@functools.lru_cache(maxsize=None)
def model_and_hf(n_layers: int = 3, seed: int = 0):
    from hooked_vlm import HookedVLM

    folder, hf = tiny.make_llava(text=tiny.llama_text_config(num_hidden_layers=n_layers), seed=seed)
    model = HookedVLM.from_pretrained(str(folder), processor=make_processor())
    model.cfg.roles.boi_token_id = BOI
    model.cfg.roles.eoi_token_id = EOI
    return model, hf


def n_image_tokens(hf) -> int:
    return tiny.image_tokens_per_image(hf)


def example(hf, seed: int, text_before: int = 2, text_after: int = 5) -> dict:
    """One example (batch 1): BOS, text, BOI, image tokens, EOI, text."""
    g = torch.Generator().manual_seed(seed)
    ids = [tiny.BOS] + torch.randint(3, 90, (text_before,), generator=g).tolist()
    ids += [BOI] + [tiny.IMAGE_TOKEN] * n_image_tokens(hf) + [EOI]
    ids += torch.randint(3, 90, (text_after,), generator=g).tolist()
    vc = hf.config.vision_config
    return dict(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                pixel_values=torch.randn(1, 3, vc.image_size, vc.image_size, generator=g))


def batch(hf, seeds: Sequence[int], text_after: Sequence[int] | None = None) -> dict:
    """Several examples of different lengths in one left-padded batch."""
    from hooked_vlm.analysis import collate

    text_after = text_after or [5] * len(seeds)
    model, _ = model_and_hf()
    return collate(model, [example(hf, s, text_after=t) for s, t in zip(seeds, text_after)])


def same_shape_pair(hf, seed_a: int = 1, seed_b: int = 2) -> tuple[dict, dict]:
    """Two examples with identical tokens and different images."""
    a = example(hf, seed_a)
    b = dict(a)
    vc = hf.config.vision_config
    b["pixel_values"] = torch.randn(1, 3, vc.image_size, vc.image_size, generator=torch.Generator().manual_seed(seed_b))
    return a, b


def generate_steps(model, inputs, hooks, n=5, **kw):
    """(tokens, final-norm state of the row that predicts each new token) of a greedy generate with ``hooks``."""
    seen = []
    rec = lambda t, hook: seen.append(t[:, -1].clone())
    tokens = model.generate(**inputs, fwd_hooks=hooks + [("ln_final.hook_normalized", rec)], max_new_tokens=n,
                            return_type="tokens", stop_at_eos=False, **kw)
    return tokens, torch.stack(seen, 1)
