"""A tiny random PaliGemma 2 (PaliGemmaForConditionalGeneration with a Gemma 2 LM) + an offline PaliGemmaProcessor.

Shapes: SigLIP tower 16x16 px, patch 4 -> 16 image tokens (a 4x4 grid); linear projector 32 -> 32; Gemma 2 LM 4 layers
(sliding, full, sliding, full), sliding_window 6 (shorter than the prefix), GQA 4/2 heads, head_dim 8,
query_pre_attn_scalar 16, attention soft-cap 2.0 and final-logit soft-cap 3.0 (small, so that tanh really bends the
numbers: q/k weights are scaled up so that raw scores reach several units).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from packaging.version import Version

from tests import tiny

VOCAB = tiny.VOCAB  # 120
IMAGE_TOKEN, NEWLINE = 100, 103
PAD, BOS, EOS = 0, 2, 1  # Gemma's ids: <pad>=0, <eos>=1, <bos>=2
N_IMAGE_TOKENS = 16
SLIDING_WINDOW = 6
ATTN_CAP, FINAL_CAP = 2.0, 3.0
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
#: HF's own PaliGemma before transformers 5.23 is not the reference (tests/test_paligemma.py HF_PALIGEMMA_IS_RIGHT)
HF_IS_REFERENCE = Version(transformers.__version__) >= Version("5.23")
HF_REFERENCE_REASON = (f"transformers {transformers.__version__} < 5.23: HF's PaliGemma ignores the soft-caps "
                       "(the reference is 5.23)")


def gemma2_text_config(**overrides: Any) -> dict:
    cfg = dict(model_type="gemma2", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=16,
               max_position_embeddings=512, sliding_window=SLIDING_WINDOW, layer_types=list(LAYER_TYPES),
               attn_logit_softcapping=ATTN_CAP, final_logit_softcapping=FINAL_CAP,
               pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, rms_norm_eps=1e-6)
    cfg.update(overrides)
    return cfg


def gemma_text_config(**overrides: Any) -> dict:
    """PaliGemma 1's Gemma LM (pre-norm, no soft-caps, no sliding window; HF runs it with SDPA): 3 layers, MQA."""
    cfg = dict(model_type="gemma", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=512,
               hidden_act="gelu_pytorch_tanh", pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    cfg.update(overrides)
    return cfg


def siglip_vision_config(**overrides: Any) -> dict:
    cfg = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, image_size=16, patch_size=4, num_channels=3, vision_use_head=False)
    cfg.update(overrides)
    return cfg


def make_paligemma(folder: Path | None = None, text: dict | None = None, vision: dict | None = None, seed: int = 0,
                   processor: bool = True, sharpen: bool = True, **top: Any) -> tuple[Path, Any]:
    """Save a tiny random PaliGemmaForConditionalGeneration (and its processor); returns (folder, hf_model in eval).
    ``sharpen``: q/k and embedding weights scaled up so that the soft-caps bend the numbers (logits of several units)."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    torch.manual_seed(seed)
    kwargs = dict(text_config=text or gemma2_text_config(), vision_config=vision or siglip_vision_config(),
                  image_token_index=IMAGE_TOKEN, projection_dim=32, hidden_size=32)
    kwargs.update(top)
    model = PaliGemmaForConditionalGeneration(PaliGemmaConfig(**kwargs)).eval()
    with torch.no_grad():  # init leaves norms at 0 (Gemma: 1 + w) and biases at 0: perturb (as tests/tiny.py)
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
            if not sharpen:
                continue
            if "language_model" in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(25.0)  # raw scores of several units: the 2.0 attention soft-cap bends them
            if name.endswith("embed_tokens.weight"):
                p.mul_(10.0)  # logits of several units: the 3.0 final soft-cap bends them
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny_paligemma_"))
    model.save_pretrained(folder)
    if processor:
        save_paligemma_processor(folder, model.config.vision_config.image_size)
    return folder, model


def paligemma_tokenizer():
    """A WordLevel tokenizer: <pad>=0, <eos>=1, <bos>=2, words, <image>=100, "\\n"=103. Spaces split words, "\\n" is a
    token of its own (the processor ends every prompt with it); a text pair (the processor's ``suffix=``) gets
    token type 1."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = {"<pad>": PAD, "<eos>": EOS, "<bos>": BOS, "<unk>": 3, "<image>": IMAGE_TOKEN, "\n": NEWLINE}
    vocab = tiny.word_vocab(special, VOCAB)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(" +"), "removed"),
                                                 pre_tokenizers.Split("\n", "isolated")])
    tok.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B:1")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})


def save_paligemma_processor(folder: Path, image_size: int = 16):
    """A real PaliGemmaProcessor (word tokenizer + the PIL SigLIP image processor) saved beside a checkpoint."""
    from transformers import PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = N_IMAGE_TOKENS
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=paligemma_tokenizer())
    processor.save_pretrained(folder)
    return processor


def paligemma_batch(hf_model: Any, prefix_lens: list[int], suffix_lens: list[int], pad_left: list[int], seed: int = 0,
                    right: bool = False) -> dict:
    """The processor's layout: 16 x <image>, <bos>, prefix words, "\\n" (token type 0), then suffix words (type 1);
    padding left (right with ``right``) has type 0 as the processor pads it."""
    g = torch.Generator().manual_seed(seed)
    rows, types = [], []
    for n_prefix, n_suffix in zip(prefix_lens, suffix_lens):
        prefix = [IMAGE_TOKEN] * N_IMAGE_TOKENS + [BOS] + torch.randint(4, 90, (n_prefix,), generator=g).tolist() + [NEWLINE]
        suffix = torch.randint(4, 90, (n_suffix,), generator=g).tolist()
        rows.append(prefix + suffix)
        types.append([0] * len(prefix) + [1] * len(suffix))
    input_ids, mask = tiny.pad_rows(rows, pad_left, right=right)
    token_type_ids = torch.zeros_like(input_ids)
    for i, t in enumerate(types):
        real = mask[i].bool().nonzero().flatten()
        token_type_ids[i, real] = torch.tensor(t)
    vc = hf_model.config.vision_config
    pixel_values = torch.randn(len(rows), 3, vc.image_size, vc.image_size, generator=g)
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, token_type_ids=token_type_ids)


def paligemma1_case(**kwargs: Any) -> tuple[Path, Any, dict]:
    """As :func:`paligemma_case` with PaliGemma 1's Gemma LM."""
    folder, hf = make_paligemma(text=gemma_text_config(), processor=False, **kwargs)
    return folder, hf, paligemma_batch(hf, [7, 5, 9], [0, 4, 3], [2, 0, 5])


def paligemma_case(**kwargs: Any) -> tuple[Path, Any, dict]:
    """(folder, hf, inputs): batch of 3 with prefixes longer than the window, suffixes of 0, 4 and 3 words, left
    padding 2, 0, 5."""
    folder, hf = make_paligemma(**kwargs)
    return folder, hf, paligemma_batch(hf, [7, 5, 9], [0, 4, 3], [2, 0, 5])


@functools.lru_cache(maxsize=None)
def _paligemma_built() -> tiny.Built:
    folder, hf = make_paligemma(text=gemma2_text_config(attn_logit_softcapping=None, final_logit_softcapping=None),
                                sharpen=False)
    return tiny.load(folder, hf, paligemma_batch(hf, [7, 5, 9], [0, 4, 3], [2, 0, 5]),
                     paligemma_batch(hf, [8, 8], [3, 3], [0, 0], seed=1))


def paligemma() -> tiny.Built:
    """tests/test_parity.py's factory (skipped where HF is not the reference): PaliGemma 2's Gemma 2 LM (sandwich norms,
    sliding / full layers, window 6 shorter than every prefix) and prefix-LM mask on a prefix / suffix batch (suffixes
    of 0, 4 and 3 words, left padding 2, 0, 5; unpadded: 2 x (8 prefix + 3 suffix words)), with the soft-caps off:
    SDPA cannot soft-cap, so with them every LM attention takes the explicit path, which the path checks there forbid
    (tests/test_paligemma.py tests the caps against HF); weights not sharpened (logits of scale ~1, as every case)."""
    if not HF_IS_REFERENCE:
        pytest.skip(HF_REFERENCE_REASON)
    return _paligemma_built()
