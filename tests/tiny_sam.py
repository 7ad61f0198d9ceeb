"""Tiny random checkpoints of the families with SAM's ViT, built offline.

``deepseek_vl_hybrid``: SigLIP (8 px, 4 x 4 patches) beside a SAM ViT on 32 px (8 x 8 patches, 3 layers: window 3,
so the 8 x 8 grid is zero-padded to 9 x 9 in the windowed layers; layer 1 global), the hybrid aligner, a Llama LM.
SAM's zero-initialised tensors (absolute positions, relative-position tables, the aligner's ``high_res_vision_alpha``)
are randomised so each one matters. The batch is DeepseekVLHybridProcessor's layout: the image token repeated
``num_image_tokens`` (= the SigLIP patch grid) times per image, no markers; ``high_res_pixel_values`` beside
``pixel_values``.

``got_ocr2``: GOT-OCR2's SAM ViT on 48 px (12 x 12 patches, window 5: padded to 15 x 15; layer 1 global), its two
stride-2 convs (12 -> 6 -> 3: 9 tokens per image) + Linear, a Qwen2 LM. The batch IS GotOcr2Processor's output (a
word tokenizer with ``<img>`` / ``</img>`` / ``<imgpad>``, left padding): ``<img>`` + ``<imgpad>`` x 9 + ``</img>``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from tests import tiny_next_pixtral as tnp
from tests import tiny
from tests.tiny import IMAGE_TOKEN, VOCAB, Built, llama_text_config, load, pad_rows

ZERO_INIT = ("pos_embed", "rel_pos_h", "rel_pos_w", "high_res_vision_alpha")


def sam_vision(**overrides: Any) -> dict:
    cfg = dict(model_type="sam_vision_model", hidden_size=16, output_channels=8, num_hidden_layers=3,
               num_attention_heads=2, image_size=32, patch_size=4, window_size=3, global_attn_indexes=[1], mlp_dim=32,
               initializer_range=0.2)  # SAM's default 1e-10 leaves every matrix ~0: the attention would do nothing
    cfg.update(overrides)
    return cfg


def _randomise_zero_init(hf: Any, folder: Any) -> None:
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(ZERO_INIT):
                p.copy_(torch.randn_like(p) * 0.5)
    hf.save_pretrained(folder)


# ---------------------------------------------------------------- DeepSeek-VL-Hybrid
def make_deepseek_vl_hybrid(seed: int = 0):
    from transformers import DeepseekVLHybridConfig, DeepseekVLHybridForConditionalGeneration

    config = DeepseekVLHybridConfig(text_config=llama_text_config(num_key_value_heads=2),
                                    vision_config=tnp.siglip_vision(vision_use_head=False),
                                    high_res_vision_config=sam_vision(), image_token_id=IMAGE_TOKEN)
    folder, hf = tnp._save(config, DeepseekVLHybridForConditionalGeneration, "tiny_deepseek_vl_hybrid_", seed)
    _randomise_zero_init(hf, folder)
    return folder, hf


def deepseek_vl_hybrid_batch(hf: Any, images: list[int], pad_left: list[int], seed: int = 0) -> dict:
    """DeepseekVLHybridProcessor's layout: num_image_tokens (the SigLIP patch grid) x the image token per image,
    between words; each image at both resolutions."""
    g = torch.Generator().manual_seed(seed)
    vc, hc = hf.config.vision_config, hf.config.high_res_vision_config
    runs = [[[IMAGE_TOKEN] * (vc.image_size // vc.patch_size) ** 2 for _ in range(k)] for k in images]
    input_ids, mask = pad_rows(tnp._rows(runs, g), pad_left)
    n = sum(images)
    return dict(input_ids=input_ids, attention_mask=mask,
                pixel_values=torch.randn(n, 3, vc.image_size, vc.image_size, generator=g),
                high_res_pixel_values=torch.randn(n, 3, hc.image_size, hc.image_size, generator=g))


@functools.lru_cache(maxsize=None)
def deepseek_vl_hybrid() -> Built:
    folder, hf = make_deepseek_vl_hybrid()
    inputs = deepseek_vl_hybrid_batch(hf, [1, 2], [3, 0])
    unpadded = deepseek_vl_hybrid_batch(hf, [1, 1], [0, 0], seed=1)
    return load(folder, hf, inputs, unpadded, None)


# ---------------------------------------------------------------- GOT-OCR2
IMG_START, IMG_END = 101, 102


def make_got_ocr2(seed: int = 0, **vision_overrides: Any):
    from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration

    vision = sam_vision(**{"model_type": "got_ocr2_vision", "image_size": 48, "window_size": 5, **vision_overrides})
    config = GotOcr2Config(text_config=llama_text_config(model_type="qwen2", num_key_value_heads=2),
                           vision_config=vision, image_token_index=IMAGE_TOKEN, image_seq_length=9)
    folder, hf = tnp._save(config, GotOcr2ForConditionalGeneration, "tiny_got_ocr2_", seed)
    _randomise_zero_init(hf, folder)
    return folder, hf


def got_tokenizer():
    """tests.tiny's word tokenizer with GOT's markers: <imgpad> = IMAGE_TOKEN, <img> / </img>, <|im_start|> /
    <|im_end|> (the processor's chat markers), and the words of its OCR prompt."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = {"<pad>": tiny.PAD, "<s>": tiny.BOS, "</s>": tiny.EOS, "<unk>": 3, "<imgpad>": IMAGE_TOKEN,
               "<img>": IMG_START, "</img>": IMG_END, "<|im_start|>": 103, "<|im_end|>": 104}
    vocab = dict(special)
    words = tiny.WORDS + ["system", "user", "assistant", "OCR", "OCR:", "You", "should", "follow", "instructions",
                          "carefully", "and", "explain", "your", "answers", "detail."]
    free = iter(i for i in range(4, VOCAB) if i not in special.values())
    for w in words:
        vocab.setdefault(w, next(free))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=[k for k in special if k[0] == "<"][4:])
    out.padding_side = "left"
    return out


def got_processor():
    from transformers import GotOcr2ImageProcessor, GotOcr2Processor

    ip = GotOcr2ImageProcessor(size={"height": 48, "width": 48})
    return GotOcr2Processor(image_processor=ip, tokenizer=got_tokenizer())


def got_batch(processor, texts: list[str], seed: int) -> dict:
    """GotOcr2Processor's own output for ``texts`` (each ``<img><imgpad></img>``: the processor expands the pad to 9
    per image), one image each, left padded."""
    images = [tiny.pil_image(seed * 10 + i, size=30 + 7 * i) for i in range(len(texts))]
    out = processor(images=images, text=texts, return_tensors="pt", padding=True, num_image_tokens=9)
    return {k: v for k, v in dict(out).items() if k in ("input_ids", "attention_mask", "pixel_values")}


#: the processor's own OCR prompt (GotOcr2Processor.prepare_inputs_layout without text), and a shorter one
OCR_PROMPT = "<|im_start|>user\n<img><imgpad></img>\nOCR: <|im_end|><|im_start|>assistant\n"


@functools.lru_cache(maxsize=None)
def got_ocr2() -> Built:
    folder, hf = make_got_ocr2()
    processor = got_processor()
    processor.save_pretrained(folder)
    inputs = got_batch(processor, [OCR_PROMPT, "<img><imgpad></img> OCR:"], seed=0)
    unpadded = got_batch(processor, ["<img><imgpad></img> what is this ?", "<img><imgpad></img> the red circle ?"],
                         seed=1)
    return load(folder, hf, inputs, unpadded)
