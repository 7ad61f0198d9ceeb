"""Which vision-input generation classes of the installed transformers we convert, and what the others lack.

:func:`vision_generation_classes` finds them by reading transformers' modeling sources (no imports, no hand list):
every ``*ForConditionalGeneration`` / ``*ForCausalLM`` / ``*ForVisionText2Text`` class whose ``forward`` takes image
input (``pixel_values``; Phi-4-multimodal's ``image_pixel_values``; Pix2Struct's ``flattened_patches``).
Each one is supported (a converter in the registry, parity-tested: :data:`PARITY_CASES` names its CASES lines in
tests/test_parity.py) or refused in :data:`REFUSED` with the part we lack. ``tests/test_families_table.py`` fails
when transformers has a class listed in neither, and writes docs/families.md's coverage table and the README's
families table from this module (:func:`coverage_rows`, :func:`readme_rows`).
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

_CLASS = re.compile(r"^class (\w+For(?:ConditionalGeneration|CausalLM|VisionText2Text))\(", re.M)
#: image inputs of generation forwards (Phi-4-multimodal: image_pixel_values; Pix2Struct: flattened_patches; in older
#: transformers Fuyu's image_patches and Video-LLaVA's pixel_values_images)
IMAGE_ARGS = ("pixel_values", "image_pixel_values", "flattened_patches", "image_patches", "pixel_values_images")


#: video inputs of generation forwards
VIDEO_ARGS = ("pixel_values_videos",)
#: why every family is converted for images only (checked on this machine: /work/shared/FACTS.md)
VIDEO_NOTE = ("video inputs are refused for every family: transformers' video processors need torchvision, and the "
              "torchvision wheels on PyPI (0.28 / 0.29, installed with --no-deps) link libtorch_cuda.so and do not "
              "import against the CPU torch build this project requires (`operator torchvision::nms does not "
              "exist`); a video's frames can be passed as images")


@lru_cache(maxsize=None)
def video_generation_classes() -> frozenset[str]:
    """The generation classes whose forward also takes video input (``pixel_values_videos``)."""
    return frozenset(cls for cls, args in _forward_args().items() if args & set(VIDEO_ARGS))


@lru_cache(maxsize=None)
def vision_generation_classes() -> dict[str, str]:
    """class name -> transformers model folder, for every generation class whose forward takes image input."""
    return {cls: folder for cls, (folder, args) in _forward_args_by_folder().items() if args & set(IMAGE_ARGS)}


def _forward_args() -> dict[str, set[str]]:
    return {cls: args for cls, (_, args) in _forward_args_by_folder().items()}


@lru_cache(maxsize=None)
def _forward_args_by_folder() -> dict[str, tuple[str, set[str]]]:
    """class name -> (transformers model folder, its forward's argument names), for every generation class of a
    modeling file that mentions an image input."""
    import transformers

    found = {}
    for path in sorted((Path(transformers.__file__).parent / "models").glob("*/modeling_*.py")):
        text = path.read_text()
        if not _CLASS.search(text) or not any(arg in text for arg in IMAGE_ARGS):
            continue
        for node in ast.parse(text).body:
            if isinstance(node, ast.ClassDef) and _CLASS.match(f"class {node.name}("):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "forward":
                        found[node.name] = (path.parent.name, {a.arg for a in item.args.args + item.args.kwonlyargs})
    return found


#: supported architecture -> its CASES ids in tests/test_parity.py (checked there against each case's model)
PARITY_CASES: dict[str, tuple[str, ...]] = {
    "LlavaForConditionalGeneration": ("llava-llama-mha", "llava-llama-gqa", "llava-mistral", "llava-mistral-window",
                                      "llava-qwen2-lm", "llava-layers-list", "llava-full-select", "llava-right-padding",
                                      "llava-tied", "llava-llama3-rope-bias", "llava-llama-rope-linear",
                                      "llava-llama-rope-yarn", "pixtral-llava"),
    "Qwen2VLForConditionalGeneration": ("qwen2-vl",),
    "Qwen2_5_VLForConditionalGeneration": ("qwen2.5-vl",),
    "Idefics3ForConditionalGeneration": ("idefics3",),
    "SmolVLMForConditionalGeneration": ("smolvlm",),
    "LlavaNextForConditionalGeneration": ("next-mistral-clip", "granite-vision"),
    "LlavaOnevisionForConditionalGeneration": ("onevision-qwen2-siglip",),
    "Mistral3ForConditionalGeneration": ("mistral3-pixtral",),
    "ChameleonForConditionalGeneration": ("chameleon", "chameleon-swin-norm"),
    "Emu3ForConditionalGeneration": ("emu3",),
    "JanusForConditionalGeneration": ("janus",),
    "Gemma3ForConditionalGeneration": ("gemma3",),
    "Qwen3VLForConditionalGeneration": ("qwen3-vl",),
    "Qwen3VLMoeForConditionalGeneration": ("qwen3-vl-moe",),
    "InternVLForConditionalGeneration": ("internvl-qwen2", "internvl-qwen3"),
    "Idefics2ForConditionalGeneration": ("idefics2",),
    "PaliGemmaForConditionalGeneration": ("paligemma2",),
    "MllamaForConditionalGeneration": ("mllama",),
    "VipLlavaForConditionalGeneration": ("vipllava",),
    "LightOnOcrForConditionalGeneration": ("lighton-ocr",),
    "LlavaNextVideoForConditionalGeneration": ("next-video-clip",),
    "DeepseekVLForConditionalGeneration": ("deepseek-vl",),
    "DeepseekVLHybridForConditionalGeneration": ("deepseek-vl-hybrid",),
    "GotOcr2ForConditionalGeneration": ("got-ocr2",),
    "AyaVisionForConditionalGeneration": ("aya-vision", "aya-vision-cohere-lm"),
    "Cohere2VisionForConditionalGeneration": ("cohere2-vision",),
    "Qwen3_5ForConditionalGeneration": ("qwen3.5",),
    "Qwen3_5MoeForConditionalGeneration": ("qwen3.5-moe",),
    "Lfm2VlForConditionalGeneration": ("lfm2-vl",),
    "Gemma4ForConditionalGeneration": ("gemma4-ple-kv-sharing", "gemma4-k-eq-v-moe"),
    "Glm4vForConditionalGeneration": ("glm4v",),
    "Glm4vMoeForConditionalGeneration": ("glm4v-moe",),
    "Glm46VForConditionalGeneration": ("glm46v",),
    "Llama4ForConditionalGeneration": ("llama4",),
    "Ovis2ForConditionalGeneration": ("ovis2",),
    "Exaone4_5_ForConditionalGeneration": ("exaone4.5",),
    "HunYuanVLForConditionalGeneration": ("hunyuan-vl",),
    "Molmo2ForConditionalGeneration": ("molmo2",),
}

#: README rows of the supported families: (architecture, what is converted, spans beyond image/text/last)
SUPPORTED_NOTES: list[tuple[str, str, str]] = [
    ("LlavaForConditionalGeneration", "LLaVA-1.5: CLIP + MLP projector + Llama/Vicuna/Mistral/Qwen2/Qwen3/Granite LM; "
     "mistral-community/pixtral-12b: 2D-RoPE Pixtral tower, any image size, block-diagonal", "`row_break`, `eoi` (Pixtral)"),
    ("LlavaNextForConditionalGeneration", "anyres tiles, unpadding, `image_newline`; CLIP or SigLIP (layers "
     "concatenated); Granite vision: Granite LM (embedding / residual / attention multipliers)", "`row_break`, tile of each token"),
    ("LlavaOnevisionForConditionalGeneration", "SigLIP + Qwen2, `anyres_max_N` (images; no video)", "`row_break`, tile"),
    ("Mistral3ForConditionalGeneration", "Pixtral tower + RMSNorm + patch merger", "`row_break`, `eoi`"),
    ("VipLlavaForConditionalGeneration", "CLIP, several layers concatenated, LayerNorm + MLP projector, Llama", ""),
    ("LightOnOcrForConditionalGeneration", "Pixtral tower + RMSNorm + patch merger + bias-free MLP, Qwen3 LM", ""),
    ("LlavaNextVideoForConditionalGeneration", "images: LLaVA-NeXT's path (anyres, CLIP, Llama); video inputs refused "
     "(the pooled video path is not converted)", "`row_break`, tile of each token"),
    ("DeepseekVLForConditionalGeneration", "DeepSeek-VL: SigLIP read after post_layernorm, linear1 / GELU / linear2 "
     "aligner, Llama", ""),
    ("Ovis2ForConditionalGeneration", "Ovis 2: AIMv2-style ViT (RMS norms, SwiGLU, normed patch embeddings), visual "
     "tokenizer (stride fold, linear, LayerNorm, softmax over visual words: `projector.hook_visual_logits` / "
     "`hook_visual_probs`) x visual embedding table, whose last rows embed the indicator tokens "
     "(`projector.hook_marker_embeds`); Qwen2 LM; thumbnail + crop grid", "`boi`, `eoi`, `grid_marker`, "
     "`crop_col_break`, `crop_row_break`, `thumbnail`, crop of each token (`ImageLayout.tile_grid`)"),
    ("DeepseekVLHybridForConditionalGeneration", "DeepSeek-VL-Hybrid: SigLIP (`vision.*`) beside a SAM ViT on "
     "1024 px (`vision.high_res.*`: windowed / global attention with decomposed relative positions, conv neck), "
     "combined by the hybrid aligner (`projector.hook_high_res`, `hook_low_res_proj` / `hook_high_res_proj`), Llama", ""),
    ("GotOcr2ForConditionalGeneration", "GOT-OCR2: SAM ViT (windowed / global attention with decomposed relative "
     "positions, conv neck) + two stride-2 convs + Linear, Qwen2 LM; one 1024 px page or tile per `pixel_values` row",
     "`boi`, `eoi` (`<img>` / `</img>`, from the processor)"),
    ("Qwen2VLForConditionalGeneration", "packed ViT, patch merger, M-RoPE (3-D positions computed as HF)", "`boi`, `eoi`"),
    ("Qwen2_5_VLForConditionalGeneration", "+ window attention, RMSNorm/SwiGLU ViT", "`boi`, `eoi`"),
    ("Idefics3ForConditionalGeneration", "SigLIP (NaViT patch mask), pixel shuffle, image splitting",
     "`tile_marker`, `global_marker`, `image_border`, tile"),
    ("SmolVLMForConditionalGeneration", "as Idefics3", "as Idefics3"),
    ("ChameleonForConditionalGeneration", "VQ image tokens (`vision.hook_codes`), per-head qk-norm, swin_norm",
     "`boi`, `eoi`"),
    ("Emu3ForConditionalGeneration", "VQ image tokens with row breaks, `image_sizes`",
     "`boi`, `eoi`, `row_break`, `end_of_frame`"),
    ("JanusForConditionalGeneration", "understanding path (SigLIP-style ViT + aligner); image generation not converted",
     "`boi`, `eoi`"),
    ("Gemma3ForConditionalGeneration", "SigLIP + pooled projector; sandwich `(1 + w)` norms, sliding/full layers with "
     "own RoPE, bidirectional image mask (`hook_mask`)", "`boi`, `eoi`, 16x16 grid; pan-and-scan crops: `crop` "
     "(each layout's `crop_of`, `crop_index`)"),
    ("Qwen3VLForConditionalGeneration", "packed ViT + learned interpolated positions, DeepStack "
     "(`blocks.{l}.hook_deepstack`), Qwen3 LM with qk-norm, interleaved M-RoPE (images; no video)", "`boi`, `eoi`"),
    ("Qwen3VLMoeForConditionalGeneration", "as Qwen3-VL, with top-k routed experts (`mlp_kind=\"moe\"`; router logits, "
     "chosen experts, weights, per-expert outputs hooked)", "`boi`, `eoi`"),
    ("InternVLForConditionalGeneration", "InternVL 3 / 3.5: InternViT (layer scale, LN or RMS, qk-norm over all heads), "
     "pixel shuffle + LayerNorm MLP, dynamic tiles + thumbnail, Qwen2 (dynamic-NTK RoPE below "
     "`max_position_embeddings`) / Qwen3 LM", "`boi`, `eoi`, tile of each token, `thumbnail`"),
    ("PaliGemmaForConditionalGeneration", "PaliGemma 2 (Gemma 2: attention + final-logit tanh soft-caps, sliding/full "
     "layers) and 1 (Gemma); SigLIP + linear projector; prefix-LM mask from `token_type_ids` (`hook_mask`)",
     "`prefix`, `suffix`, 16x16 grid at 224 px"),
    ("Idefics2ForConditionalGeneration", "NaViT SigLIP, gated MLP + perceiver resampler (64 latents per image; "
     "`projector.resampler.blocks.{i}.*`), Mistral LM, image splitting",
     "`latent` (no (row, col): `to_grid` refuses), `image_border`, tile (the 4 quarters + whole image)"),
    ("MllamaForConditionalGeneration", "Llama 3.2 Vision: tiled two-stage ViT (gated global encoder, aspect-ratio "
     "embeddings), linear projector, gated cross-attention layers (`blocks.{l}.cross_attn.*`, keys cached once; the "
     "image never enters the text stream: docs/cross_attention.md)", "`image` = the `<|image|>` placeholders; the keys: "
     "`cache.kv_spans` (`image.{i}`, `tile.{t}`, `cls`, `patch`, `padding`, (row, col))"),
    ("AyaVisionForConditionalGeneration", "SigLIP + pixel-shuffle SwiGLU projector (LayerNorm), Cohere2 LM (parallel "
     "attention + MLP block, bias-free LayerNorm, interleaved RoPE on sliding layers, NoPE global layers) or Cohere LM "
     "(Aya Vision 32B: q/k norms); tiles + thumbnail between markers", "`boi`, `eoi`, `tile_marker`, `global_marker`, "
     "tile of each token, `thumbnail`"),
    ("Cohere2VisionForConditionalGeneration", "SigLIP + pixel-shuffle SwiGLU projector, Cohere2 LM; tiles + thumbnail",
     "`boi`, `eoi`, `tile_break`, tile of each token, `thumbnail`"),
    ("Qwen3_5ForConditionalGeneration", "hybrid LM: Gated DeltaNet linear attention (`blocks.{l}.linear_attn.*`: conv "
     "input, q/k/v, beta, decay, gate, recurrent state `hook_state`) in 3 of 4 layers + gated attention "
     "(`attn.hook_gate`) with partial interleaved M-RoPE; Qwen3-VL's tower without DeepStack; recurrent state in the KV "
     "cache; MTP head ignored by name (docs/hybrid_models.md)", "`boi`, `eoi`"),
    ("Qwen3_5MoeForConditionalGeneration", "as Qwen3.5, with top-k routed experts + a sigmoid-gated shared expert "
     "(`mlp.shared_expert.*`, `hook_shared_gate`)", "`boi`, `eoi`"),
    ("Lfm2VlForConditionalGeneration", "LFM2-VL: SigLIP2 NaFlex tower (any aspect ratio, resized positions), pixel "
     "unshuffle + LayerNorm MLP, LFM2 hybrid LM: short-convolution layers (`blocks.{l}.conv.hook_b / hook_c / hook_x / "
     "hook_conv_out`, conv window in the KV cache) + GQA attention; knockouts skip conv layers and say so, or remove "
     "exact conv edges (`linear=\"edges\"`; docs/hybrid_models.md)", "`boi`, `eoi`, `tile_marker`, `thumbnail_marker`, "
     "tile of each token, `thumbnail`"),
    ("Gemma4ForConditionalGeneration", "gemma4_vision tower (patch lists of any size, 2-D RoPE, position pooling, "
     "standardisation; images only, no audio / video / clipped linears); LM with per-layer inputs "
     "(`blocks.{l}.hook_per_layer_input`), KV sharing (the source layer's `hook_k` edits reach the sharing layers; no "
     "cache copies), k_eq_v + own head size / KV heads on global layers, proportional RoPE, MoE beside the dense MLP "
     "(`blocks.{l}.moe.*` router hooks), layer scalars, logit soft-cap, bidirectional image mask on sliding layers "
     "(`hook_mask`)", "`boi`, `eoi`, the pooled grid of each image"),
    ("Glm4vForConditionalGeneration", "GLM-4.1V: packed ViT (post-conv norm, bicubic-sampled position table, RMS, SwiGLU) "
     "+ downsample conv and gated merger (`projector.hook_downsampled`), GLM-4 LM (sandwich post-norms, partial "
     "interleaved M-RoPE; images; video refused)", "`boi`, `eoi`"),
    ("Glm4vMoeForConditionalGeneration", "GLM-4.5V: the GLM-4V tower, GLM-4.5 MoE LM: bias-corrected grouped sigmoid "
     "router (`moe_router=\"sigmoid_grouped\"`) + ungated shared expert (`mlp.shared_expert.*`)", "`boi`, `eoi`"),
    ("Glm46VForConditionalGeneration", "GLM-4.6V: the same declaration, its LM picked by `text_config.model_type` "
     "(GLM-4 or GLM-4.5 MoE)", "`boi`, `eoi`"),
    ("Exaone4_5_ForConditionalGeneration", "EXAONE 4.5: Qwen2.5-VL's packed ViT with grouped key / value heads + patch "
     "merger; EXAONE 4 LM (`exaone4` part: post-sublayer norms only, q/k norms, sliding-window RoPE layers and NoPE "
     "global layers), 1-D positions (images; video refused)", "`boi`, `eoi`"),
    ("HunYuanVLForConditionalGeneration", "HunyuanOCR: packed ViT with a learned position grid resized per image, conv "
     "merger (2 x 2 conv, row breaks, learned begin / end embeddings; `projector.hook_downsampled`), HunYuan LM "
     "(`hunyuan_vl_text` part: q/k norms after RoPE, 4-axis xdrope positions, ntk-alpha base)",
     "`boi`, `eoi`, `row_break`"),
    ("Llama4ForConditionalGeneration", "Llama 4 (Scout, Maverick): ViT with unfold patches, class token last, learned "
     "positions + 2-D RoPE, pre / post LayerNorms; pixel-shuffle adapter + projector (`projector.hook_adapter_out`); LM "
     "with chunked local attention + NoPE layers (temperature tuning, `attn.hook_q_temperature`), L2 q/k norm, "
     "sigmoid-routed MoE on the expert input + shared expert (router hooks); tiles + global tile between markers",
     "`boi`, `eoi`, `tile_x_separator`, `tile_y_separator`, `global_tile_marker`, tile of each token, `thumbnail`"),
    ("Molmo2ForConditionalGeneration", "Molmo 2: ViT on overlapping crops, two feature layers concatenated, attention "
     "pooling of 2 x 2 patch windows (`projector.hook_pattern` per image token) + SwiGLU, added onto the `<im_patch>` "
     "embeddings; Qwen3-style LM (per-head or all-head q/k norms, optional post-norms), one bidirectional block over "
     "the image tokens and markers (images; video refused: its processor needs torchvision)",
     "`boi`, `eoi`, `low_res_boi`, `row_break` (`<im_col>`), `low_res`; (image, tile, row, col) on the low-res and "
     "high-res pooled grids"),
]

_TIMM = "its tower is a timm model (TimmWrapper: `timm` is not a dependency, and its weights follow timm's layout)"
_ENC_DEC = "an encoder-decoder (the text decoder cross-attends to the image encoder): no decoder-only LM part"

#: refused architecture -> the part(s) we lack (what `hooked-vlm inspect` prints for it)
REFUSED: dict[str, str] = {
    "AriaForConditionalGeneration": "Aria's MoE LM (aria_text) and its cross-attention projector (learned queries "
                                    "attending to the image patches)",
    "Blip2ForConditionalGeneration": "the Q-Former projector (learned queries cross-attending to the tower) and the "
                                     "OPT / T5 LM parts",
    "BlipForConditionalGeneration": "BLIP's BERT text decoder (cross-attention to the image), " + _ENC_DEC,
    "CohereCompassForConditionalGeneration": "the CohereCompass LM and its packed rotary vision tower",
    "Cosmos3EdgeForConditionalGeneration": "the Cosmos3Edge vision tower, patch merger and text model (own classes, not "
                                           "registered parts)",
    "Cosmos3OmniForConditionalGeneration": "Cosmos3Omni's multimodal (audio / video) thinker around a Qwen3-VL tower",
    "DeepseekOcr2ForConditionalGeneration": "the DeepSeek MoE LM, its second (rotary, RMS-norm) vision encoder and its "
                                            "SAM projection (the SAM ViT itself is a tower part: `sam_vision_model`)",
    "Dots3NoteForConditionalGeneration": "its MoE vision tower, audio encoder and indexed-attention MoE LM",
    "Ernie4_5_VLMoeForConditionalGeneration": "the Ernie 4.5 multimodal MoE LM (modality-routed experts) and its "
                                              "variable-resolution resampler",
    "FastVlmForConditionalGeneration": _TIMM + " (FastViTHD)",
    "Florence2ForConditionalGeneration": "the DaViT tower and the BART LM, " + _ENC_DEC,
    "FuyuForCausalLM": "Fuyu's linear patch embedding straight into a Persimmon LM (no vision tower; the Persimmon LM "
                       "part: partial rotary, LayerNorm q/k norms, squared ReLU)",
    "Gemma3nForConditionalGeneration": _TIMM + " (MobileNetV5), and the Gemma 3n LM (AltUp, laurel blocks, "
                                       "per-layer inputs)",
    "Gemma4UnifiedForConditionalGeneration": "the Gemma 4 LM (per-layer inputs, KV sharing) and its unified encoder",
    "GitForCausalLM": "GIT's BERT-style decoder over [image tokens; text] with learned positions and LayerNorm (no "
                      "decoder LM part of that kind)",
    "Glm5NextForConditionalGeneration": "the GLM-5 Next LM (linear attention, hyper-connections, indexer) and its "
                                        "vision tower",
    "GlmImageForConditionalGeneration": "GLM-Image's VQ-VAE image tokenizer and its vision tower (image generation)",
    "GlmOcrForConditionalGeneration": "the GLM-4 LM part and the GLM-OCR vision tower",
    "Granite4VisionForConditionalGeneration": "its Q-Former (blip_2_qformer) projector",
    "GraniteDoclingForConditionalGeneration": "its DeepStack connector with a density router and its vision tower",
    "HyperCLOVAXVisionV2ForConditionalGeneration": "the HyperCLOVAX LM part (model_type hyperclovax); its Qwen2.5-VL "
                                                   "tower is one we convert inside Qwen2.5-VL",
    "IdeficsForVisionText2Text": "Idefics 1's gated cross-attention layers and perceiver (cross-attention mixer "
                                 "not converted yet)",
    "Inkling2ForConditionalGeneration": "the Inkling 2 LM (dynamic short convolutions, soft-capped SwiGLU MoE, block "
                                        "attention residuals)",
    "InklingForConditionalGeneration": "the Inkling LM (short convolutions, MoE with shared experts) and its audio / "
                                       "vision encoders",
    "InstructBlipForConditionalGeneration": "the instruction-aware Q-Former projector and the OPT / T5 LM parts",
    "InstructBlipVideoForConditionalGeneration": "the instruction-aware Q-Former projector and the OPT / T5 LM parts",
    "Kimi_K25ForConditionalGeneration": "the DeepSeek-V3 LM part (MLA attention, MoE) and the Kimi vision tower",
    "Kosmos2ForConditionalGeneration": "Kosmos-2's image-to-text resampler and its sinusoidal-position LM",
    "Kosmos2_5ForConditionalGeneration": "Kosmos-2.5's Pix2Struct-style flattened-patch encoder and its resampler "
                                         "and sinusoidal-position LM",
    "Lfm3VlForConditionalGeneration": "the LFM3 LM and its short-convolution vision tower",
    "MiniCPMOcrForConditionalGeneration": "the Qwen3.5 LM (Gated DeltaNet layers; issue 24) and MiniCPM's resampler",
    "MiniCPMV4_6ForConditionalGeneration": "the Qwen3.5 LM (Gated DeltaNet layers; issue 24) and MiniCPM's resampler",
    "MiniCPMV4_7ForConditionalGeneration": "the Qwen3.5 LM (Gated DeltaNet layers; issue 24) and MiniCPM's resampler",
    "MiniMaxM3SparseForConditionalGeneration": "the MiniMax M3 sparse-attention MoE LM and its vision tower",
    "MistralLarge4ForConditionalGeneration": "the Mistral Large 4 LM (indexed sparse attention, MoE)",
    "MuseGlimmerForConditionalGeneration": "the Muse LM (centred RMS norms, normed embeddings) and its vision adapter",
    "MuseSparkForConditionalGeneration": "the Muse Spark MoE LM (residual gates) and its audio / vision encoders",
    "PI0ForConditionalGeneration": "the action expert (a robot policy, not text generation)",
    "PPFormulaNetForConditionalGeneration": "the SAM-style vision encoder and its MBart decoder, " + _ENC_DEC,
    "PaddleOCRVLForConditionalGeneration": "the Ernie LM part and the PaddleOCR NaViT tower (2-D RoPE)",
    "PerceptionLMForConditionalGeneration": _TIMM + " (Perception Encoder)",
    "Phi4MultimodalForCausalLM": "Phi-4-multimodal's LoRA adapters per modality and its SigLIP-2 HD transform",
    "Pix2StructForConditionalGeneration": "Pix2Struct's flattened-patch encoder and its T5-style decoder, " + _ENC_DEC,
    "QianfanOCRForConditionalGeneration": "its InternViT-style tower (qianfan_ocr_vision: layer scale, drop-path) is not a "
                                          "tower part yet; projector and Qwen3 LM are InternVL's kind (a candidate)",
    "Qwen2_5OmniThinkerForConditionalGeneration": "the Omni thinker's audio encoder and TMRoPE (time-aligned 3-D "
                                                  "positions)",
    "Qwen3OmniMoeThinkerForConditionalGeneration": "the Omni MoE thinker's audio encoder and TMRoPE",
    "Qwen4ExpForConditionalGeneration": "the Qwen4-Exp LM (Gated DeltaNet, n-gram embeddings, per-layer inputs)",
    "Step3p7ForConditionalGeneration": "the Step 3 MoE LM and its vision tower",
    "T5Gemma2ForConditionalGeneration": "the T5Gemma 2 encoder-decoder, " + _ENC_DEC,
    "UdopForConditionalGeneration": "UDOP's T5 encoder-decoder with layout embeddings, " + _ENC_DEC,
    "UnlimitedOcrForConditionalGeneration": "the DeepSeek MoE LM and its own SAM-variant encoder (not checked against "
                                            "the `sam_vision_model` tower part)",
    "VideoLlama3ForConditionalGeneration": "the VideoLLaMA 3 NaViT tower (2-D RoPE) and its video token compression",
    "VideoLlavaForConditionalGeneration": "its video tower path (the image path is LLaVA's: CLIP + MLP + Llama)",
}


def status(architecture: str, registered: set[str]) -> str:
    """"supported" (a converter and parity cases), "refused" (REFUSED names the missing part) or "unlisted"."""
    if architecture in registered and architecture in PARITY_CASES:
        return "supported"
    return "refused" if architecture in REFUSED else "unlisted"


def missing_parts(architecture: str) -> str | None:
    return REFUSED.get(architecture)


def coverage_rows(registered: set[str]) -> list[str]:
    """docs/families.md's table: every discovered class (and every registered one), its status and evidence."""
    import transformers

    rows = [f"transformers {transformers.__version__}:", "",
            "| HF class | transformers folder | status | parity cases (tests/test_parity.py CASES) / missing part |",
            "|---|---|---|---|"]
    classes = {**vision_generation_classes(), **{a: "" for a in registered if a not in vision_generation_classes()}}
    for cls in sorted(classes, key=str.lower):
        state = status(cls, registered)
        detail = (", ".join(f"`{c}`" for c in PARITY_CASES[cls]) if state == "supported"
                  else REFUSED.get(cls, "NOT LISTED: add it to converters/coverage.py"))
        if state == "supported" and cls in video_generation_classes():
            state = "supported (images; video refused)"
        rows.append(f"| `{cls}` | {classes[cls]} | {state} | {detail} |")
    n_sup = sum(status(c, registered) == "supported" for c in classes)
    rows.append(f"| **{len(classes)} classes** | | **{n_sup} supported** | |")
    rows += ["", f"Video: {VIDEO_NOTE}."]
    return rows


def readme_rows() -> list[str]:
    rows = ["| HF architecture | what is converted | spans beyond image/text/last |", "|---|---|---|"]
    rows += [f"| `{arch}` | {what} | {spans} |" for arch, what, spans in SUPPORTED_NOTES]
    return rows
