"""Tiny random native-multimodal HF checkpoints (Chameleon, Emu3, Janus) built offline, plus offline processors."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests.tiny import Built, load

PAD, BOS, EOS = 0, 1, 2
N_WORDS = 40
N_CODES = 16
_LETTERS = "ABCDEFGHIJ"


def _perturb_norms(model: Any, skip: tuple[str, ...] = ()) -> None:
    """Random init leaves norms at 1 and biases at 0: perturb them so they are tested."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(s in name for s in skip):
                continue
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)


def _save(model: Any, prefix: str, folder: Path | None) -> Path:
    folder = Path(folder or tempfile.mkdtemp(prefix=prefix))
    model.save_pretrained(folder)
    return folder


def _left_pad(rows: list[list[int]], pads: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) + p for r, p in zip(rows, pads))
    ids = torch.full((len(rows), length), PAD)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = torch.tensor(r)
        mask[i, length - len(r):] = 1
    return ids, mask


# ---------------------------------------------------------------- Chameleon
def chameleon_vocab() -> dict[str, int]:
    names = ["<pad>", "<s>", "</s>", "<image>", "<racm3:break>", "<eoss>", "<reserved08706>", "<unk>"]
    names += [f"w{i}" for i in range(N_WORDS)]
    names += ["IMGIMG" + "".join(_LETTERS[int(d)] for d in str(c)) + "Z" for c in range(N_CODES)]
    return {n: i for i, n in enumerate(names)}


def make_chameleon(folder: Path | None = None, seed: int = 0, **overrides: Any) -> tuple[Path, Any]:
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    torch.manual_seed(seed)
    vm = chameleon_vocab()
    kwargs = dict(vocab_size=len(vm) + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, vocabulary_map=vm, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                  vq_config=dict(embed_dim=32, num_embeddings=N_CODES, latent_channels=32, resolution=8, base_channels=32,
                                 channel_multiplier=[1, 2], num_res_blocks=1))
    kwargs.update(overrides)
    model = ChameleonForConditionalGeneration(ChameleonConfig(**kwargs)).eval()
    _perturb_norms(model, skip=("vqmodel",))
    return _save(model, "tiny_chameleon_", folder), model


def chameleon_batch(hf: Any, images: list[int], pads: list[int], seed: int = 0, size: int = 8) -> dict:
    """Processor-shaped rows: BOS, words, per image <racm3:break> <image>*n <eoss>, words; left padding."""
    vm = hf.config.vocabulary_map
    f = 2 ** (len(hf.config.vq_config.channel_multiplier) - 1)
    n_img = (size // f) ** 2
    g = torch.Generator().manual_seed(seed)
    words = lambda k: (torch.randint(8, 8 + N_WORDS, (k,), generator=g)).tolist()
    rows = []
    for k in images:
        ids = [BOS] + words(2)
        for _ in range(k):
            ids += [vm["<racm3:break>"]] + [vm["<image>"]] * n_img + [vm["<eoss>"]] + words(1)
        rows.append(ids + words(4))
    input_ids, mask = _left_pad(rows, pads)
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=torch.randn(sum(images), 3, size, size, generator=g))


# ---------------------------------------------------------------- Emu3
EMU3_SPECIAL = ["<|image start|>", "<|image end|>", "<|image token|>", "<|extra_200|>", "<|extra_201|>"]


def emu3_vocab() -> dict[str, int]:
    names = ["<pad>", "<s>", "</s>", "<image>", *EMU3_SPECIAL, "<unk>", "*"] + [str(d) for d in range(10)]
    names += [f"w{i}" for i in range(N_WORDS)]
    names += [f"<|visual token{c:06d}|>" for c in range(N_CODES)]
    return {n: i for i, n in enumerate(names)}


def make_emu3(folder: Path | None = None, seed: int = 0, **overrides: Any) -> tuple[Path, Any]:
    """VQ downsampling 8 (four levels), as Emu3's processor assumes."""
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    torch.manual_seed(seed)
    vm = emu3_vocab()
    kwargs = dict(vocabulary_map=vm,
                  text_config=dict(vocab_size=len(vm) + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD, bos_token_id=BOS,
                                   eos_token_id=EOS, max_position_embeddings=512),
                  vq_config=dict(codebook_size=N_CODES, embed_dim=4, latent_channels=4, base_channels=32,
                                 channel_multiplier=[1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[], hidden_size=32))
    kwargs.update(overrides)
    model = Emu3ForConditionalGeneration(Emu3Config(**kwargs)).eval()
    _perturb_norms(model, skip=("vqmodel",))
    return _save(model, "tiny_emu3_", folder), model


def emu3_batch(hf: Any, images: list[list[tuple[int, int]]], pads: list[int], seed: int = 0) -> dict:
    """Processor-shaped rows; images[i] lists the (height, width) of item i's images; pixels padded to the largest."""
    vm = hf.config.vocabulary_map
    f = 2 ** (len(hf.config.vq_config.channel_multiplier) - 1)
    g = torch.Generator().manual_seed(seed)
    words = lambda k: torch.randint(vm["w0"], vm["w0"] + N_WORDS, (k,), generator=g).tolist()
    rows, sizes = [], []
    for item in images:
        ids = [BOS] + words(2)
        for h, w in item:
            r, c = h // f, w // f
            ids += [vm["<|image start|>"], vm[str(r)], vm["*"], vm[str(c)], vm["<|image token|>"]]
            ids += [vm["<image>"]] * (r * (c + 1)) + [vm["<|extra_201|>"], vm["<|image end|>"]] + words(1)
            sizes.append((h, w))
        rows.append(ids + words(4))
    input_ids, mask = _left_pad(rows, pads)
    hmax, wmax = max(s[0] for s in sizes), max(s[1] for s in sizes)
    pixels = torch.zeros(len(sizes), 3, hmax, wmax)
    for i, (h, w) in enumerate(sizes):
        pixels[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, image_sizes=torch.tensor(sizes))


# ---------------------------------------------------------------- Janus
JANUS_SPECIAL = ["<image_placeholder>", "<begin_of_image>", "<end_of_image>"]


def janus_vocab() -> dict[str, int]:
    names = ["<pad>", "<s>", "</s>", "<unk>", *JANUS_SPECIAL] + [f"w{i}" for i in range(N_WORDS)]
    return {n: i for i, n in enumerate(names)}


def make_janus(folder: Path | None = None, seed: int = 0, **overrides: Any) -> tuple[Path, Any]:
    from transformers import JanusConfig, JanusForConditionalGeneration

    torch.manual_seed(seed)
    vm = janus_vocab()
    kwargs = dict(text_config=dict(model_type="llama", vocab_size=len(vm) + 4, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, pad_token_id=PAD,
                                   bos_token_id=BOS, eos_token_id=EOS, rms_norm_eps=1e-5),
                  vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=8, patch_size=2,
                                     projection_dim=32, mlp_ratio=2.0, num_image_tokens=16),
                  vq_config=dict(embed_dim=8, num_embeddings=N_CODES, latent_channels=32, base_channels=32,
                                 channel_multiplier=[1, 2], num_res_blocks=1, projection_dim=32, image_token_embed_dim=32),
                  image_token_id=vm["<image_placeholder>"])
    kwargs.update(overrides)
    model = JanusForConditionalGeneration(JanusConfig(**kwargs)).eval()
    _perturb_norms(model, skip=("vqmodel", "generation_"))
    return _save(model, "tiny_janus_", folder), model


def janus_batch(hf: Any, images: list[int], pads: list[int], seed: int = 0) -> dict:
    vm = janus_vocab()
    vc = hf.config.vision_config
    g = torch.Generator().manual_seed(seed)
    words = lambda k: torch.randint(vm["w0"], vm["w0"] + N_WORDS, (k,), generator=g).tolist()
    rows = []
    for k in images:
        ids = [BOS] + words(2)
        for _ in range(k):
            ids += [vm["<begin_of_image>"]] + [hf.config.image_token_id] * vc.num_image_tokens + [vm["<end_of_image>"]]
        rows.append(ids + words(4))
    input_ids, mask = _left_pad(rows, pads)
    return dict(input_ids=input_ids, attention_mask=mask,
                pixel_values=torch.randn(sum(images), 3, vc.image_size, vc.image_size, generator=g))


# ---------------------------------------------------------------- offline processors
def word_tokenizer(vocab: dict[str, int], special: list[str], **named: str) -> Any:
    """A WordLevel tokenizer (whitespace, digits and punctuation split); ``named`` sets e.g. image_token="<image>"."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.Punctuation()])
    base = {k: v for k, v in named.items() if k in ("bos_token", "eos_token", "pad_token", "sep_token", "unk_token")}
    extra = {k: v for k, v in named.items() if k not in base}
    out = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>", extra_special_tokens=extra, **base)
    out.add_special_tokens({"additional_special_tokens": special})
    return out


def chameleon_processor(image_seq_length: int = 16, size: int = 8) -> Any:
    from transformers import ChameleonProcessor
    from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil

    tok = word_tokenizer(chameleon_vocab(), ["<image>", "<racm3:break>", "<eoss>", "<reserved08706>"],
                         sep_token="<reserved08706>")
    ip = ChameleonImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return ChameleonProcessor(image_processor=ip, tokenizer=tok, image_seq_length=image_seq_length)


def emu3_processor() -> Any:
    from transformers import Emu3ImageProcessor, Emu3Processor

    tok = word_tokenizer(emu3_vocab(), ["<image>", *EMU3_SPECIAL], image_token="<image>", boi_token="<|image start|>",
                         eoi_token="<|image end|>", image_wrapper_token="<|image token|>", eof_token="<|extra_201|>")
    ip = Emu3ImageProcessor(min_pixels=8 * 8, max_pixels=32 * 32, spatial_factor=8)
    return Emu3Processor(image_processor=ip, tokenizer=tok)


def janus_processor(size: int = 8) -> Any:
    from transformers import JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    tok = word_tokenizer(janus_vocab(), JANUS_SPECIAL, image_token="<image_placeholder>", boi_token="<begin_of_image>",
                         eoi_token="<end_of_image>")
    ip = JanusImageProcessorPil(size={"height": size, "width": size}, min_size=2)
    return JanusProcessor(image_processor=ip, tokenizer=tok, num_image_tokens=(size // 2) ** 2)


def pil_image(h: int, w: int, seed: int = 0) -> Any:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------- parity cases: () -> (folder, hf_model, padded batch)
def chameleon_case() -> tuple[Path, Any, dict]:
    folder, hf = make_chameleon()
    return folder, hf, chameleon_batch(hf, [1, 2], [3, 0])


def chameleon_swin_case() -> tuple[Path, Any, dict]:
    """swin_norm=True: norms applied to the attention / MLP outputs (Chameleon-34B)."""
    folder, hf = make_chameleon(swin_norm=True)
    return folder, hf, chameleon_batch(hf, [2, 1], [0, 4])


def emu3_case() -> tuple[Path, Any, dict]:
    """Images of three sizes in one batch (pixels padded to the largest, as Emu3's processor does)."""
    folder, hf = make_emu3()
    return folder, hf, emu3_batch(hf, [[(16, 24)], [(16, 16), (8, 16)]], [3, 0])


def janus_case() -> tuple[Path, Any, dict]:
    folder, hf = make_janus(tie_word_embeddings=False)
    return folder, hf, janus_batch(hf, [1, 2], [3, 0])


# ---------------------------------------------------------------- cached factories (tests/tiny.py: Built)
# One build per family, loaded with the family's offline processor; unpadded: items of equal length.
@functools.lru_cache(maxsize=None)
def chameleon(swin_norm: bool = False) -> Built:
    folder, hf, inputs = chameleon_swin_case() if swin_norm else chameleon_case()
    return load(folder, hf, inputs, chameleon_batch(hf, [1, 1], [0, 0], seed=1), chameleon_processor())


@functools.lru_cache(maxsize=None)
def emu3() -> Built:
    folder, hf, inputs = emu3_case()
    return load(folder, hf, inputs, emu3_batch(hf, [[(16, 16)], [(16, 16)]], [0, 0], seed=1), emu3_processor())


@functools.lru_cache(maxsize=None)
def janus() -> Built:
    folder, hf, inputs = janus_case()
    return load(folder, hf, inputs, janus_batch(hf, [1, 1], [0, 0], seed=1), janus_processor())
