"""Plain-dataclass configuration of the uniform hooked architecture.

A converter turns an HF config into a :class:`HookedVLMConfig`; components read only these
fields, never the HF config or the family name. The language-model fields sit at the top
level under TransformerLens names (``n_layers``, ``d_model``, ``normalization_type`` ...), so
TL's :class:`~transformer_lens.ActivationCache` helpers work on our caches unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .config_checks import (ATTENTION_LAYER_TYPES, LAYER_TYPES, MASK_POLICIES, MLP_KINDS, MOE_ROUTERS,  # noqa: F401
                            NORM_PLACEMENTS, REL_POS_LAYER_TYPES, check_tower)
from .config_mixers import (CrossAttentionConfig, LinearAttentionConfig, RelPosAttentionConfig,  # noqa: F401
                            ShortConvConfig)

@dataclass
class TowerConfig:
    """One stack of pre-norm transformer blocks (language model or vision tower)."""

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    d_head: int | None = None
    n_key_value_heads: int | None = None
    act_fn: str = "silu"
    gated_mlp: bool = True
    normalization_type: str = "RMS"  # "RMS" or "LN" (TransformerLens names)
    norm_eps: float = 1e-6
    attn_bias: bool = False  # bias on q, k, v
    attn_out_bias: bool = False  # bias on the output projection
    mlp_bias: bool = False
    causal: bool = True
    positional: str = "rope"  # "rope" | "learned" | "none"
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    max_position_embeddings: int = 4096
    attn_scale: float | None = None  # None = d_head ** -0.5
    sliding_window: int | None = None  # keys further back than this are masked (Mistral)
    qk_norm: str | None = None  # "LN" | "RMS": normalise each head's q and k over d_head, before rope
    qk_norm_after_rope: bool = False  # the qk_norm above applied AFTER rope instead (HunYuan's query/key_layernorm)
    qk_norm_per_head: bool = False  # q/k norm weights [head, d_head] (Chameleon) instead of shared [d_head]
    qk_norm_eps: float | None = None  # None = norm_eps
    # "head": each head's q / k normalised over d_head; "all": the whole q (k) projection normalised over
    # n_heads * d_head before it is split into heads, one weight [n_heads * d_head] (InternViT-6B)
    qk_norm_scope: str = "head"
    # layer scale (InternViT, CaiT): learned per-channel gains ls1 / ls2 [d_model] multiply the attention / MLP output
    # before it is added to the residual (hook_attn_out / hook_mlp_out show the scaled outputs, what is added)
    layer_scale: bool = False
    norm_placement: str = "pre"  # "pre": x + f(ln(x)); "post_sublayer": x + ln(f(x)) (Swin-style; Chameleon swin_norm);
    #                              "sandwich": x + ln_post(f(ln(x))) (Gemma 2/3: ln1, ln1_post, ln2, ln2_post)
    norm_offset: float = 0.0  # RMS norms (q/k norms included) scale by (offset + w); Gemma: 1.0, in float32 as HF
    embed_scale: float | None = None  # token embeddings are multiplied by it (Gemma: sqrt(d_model), cast to the weight dtype)
    # per-layer attention kinds: "sliding_attention" layers use sliding_window, "full_attention" layers do not;
    # layer_rope_parameters[kind] then gives each kind its own RoPE table (Gemma 3: local 10k, global 1M linear x8);
    # a kind whose entry is None has no RoPE at all (NoPE: Cohere2's full-attention layers)
    layer_types: tuple[str, ...] | None = None
    layer_rope_parameters: dict[str, dict[str, Any] | None] | None = None
    # which keys a query may see beyond the causal ones: "causal" (none), "causal+image_bidirectional" (the
    # tokens of the same image attend to each other in both directions; Gemma 3). mask_policy_input names the
    # forward input whose presence switches the policy on (HF Gemma 3: token_type_ids); None = always on.
    mask_policy: str = "causal"
    mask_policy_input: str | None = None
    # "prefix" (PaliGemma's prefix-LM): positions whose mask_policy_input (token_type_ids) is 0 -- image + prefix text
    # -- attend to each other in both directions; the rest (the suffix, type 1) is causal. The block is OR-ed on AFTER
    # the sliding window (HF's block_sequence_ids), so the prefix sees all of itself on sliding layers too.
    # "marked_block" (HF Molmo 2): the positions whose mask_policy_input (mm_token_type_ids) is 1 -- every image token
    # AND marker of every image of the item -- form ONE block that attends to itself in both directions; the rest is
    # causal; only on a forward without a filled KV cache (HF: the prefill)
    # DeepStack (Qwen3-VL): blocks 0 .. deepstack_layers-1 each get one more image feature ADDED to the image
    # positions of their output, after hook_resid_post, at blocks.{l}.hook_deepstack [n_image_tokens, d_model]
    deepstack_layers: int = 0
    # feed-forward kind: "dense" (MLP) or "moe" (components/moe.py: top-k routed experts of width d_mlp_expert in the
    # layers listed in moe_layers, None = all; the other layers keep the dense MLP of width d_mlp)
    mlp_kind: str = "dense"
    # dense gated MLP stored as one gate_up_proj Linear [2 * d_mlp, d_model], gate rows first (GLM-4); gate_proj /
    # up_proj are views of its halves (components/mlp.py)
    fused_gate_up: bool = False
    # q, k, v stored as one Linear ``attn.qkv`` [(q k v) rows, d_model] (Molmo 2's att_proj); q_proj / k_proj / v_proj
    # are row views of it (components/fused_qkv.py), so hooks and W_Q / W_K / W_V are unchanged
    fused_qkv: bool = False
    n_experts: int = 0
    n_experts_per_tok: int = 0
    d_mlp_expert: int | None = None
    moe_layers: tuple[int, ...] | None = None
    # tanh soft-capping (Gemma 2): attention scores -> tanh(s / cap) * cap before the mask (forces the explicit
    # attention path: SDPA cannot cap), final logits -> tanh(l / cap) * cap; None = off
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    # Granite's scalars: the whole input stream (image embeddings included) x embedding_multiplier before block 0 (at
    # hook_embed); each sub-layer output x residual_multiplier before it is added (hook_attn_out / hook_mlp_out show
    # what is added)
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    position_offset: int = 0  # added to default position ids and generate's (PaliGemma positions are 1-indexed)
    # partial rotary (Qwen3.5: partial_rotary_factor 0.25): RoPE turns the first rotary_dim of each head's d_head
    # channels (rotate-half within them) and passes the rest through; None = all of d_head
    rotary_dim: int | None = None
    # gated attention (Qwen3.5 attn_output_gate): q_proj also makes a per-head gate [head, d_head] (stored interleaved
    # per head as in the checkpoint: q then gate); the attention output is multiplied by sigmoid(gate) before o_proj
    attn_output_gate: bool = False
    # token mixers other than attention, for the layers whose layer_types entry names them
    linear_attention: LinearAttentionConfig | None = None
    short_conv: ShortConvConfig | None = None
    # shared expert beside the routed ones (MoE layers): a gated MLP of width d_mlp_shared_expert that every token
    # takes; shared_expert_gate: its output is scaled by sigmoid(linear(x)) [1 per token] (Qwen3.5-MoE, Qwen2-MoE);
    # False: added ungated (GLM-4.5 / DeepSeek-style shared experts)
    d_mlp_shared_expert: int | None = None
    shared_expert_gate: bool = False
    # cross-attention mixer of the layers whose layer_types entry is "cross_attention" (Mllama)
    cross_attention: CrossAttentionConfig | None = None
    # windowed / global attention with decomposed relative positions (REL_POS_LAYER_TYPES layers; SAM's ViT)
    rel_pos_attention: RelPosAttentionConfig | None = None
    # tanh-gated residual adds (Mllama's cross-attention layers, Mllama's global vision encoder): in these layers the
    # mixer and MLP outputs are multiplied by tanh of learned scalars attn_gate / mlp_gate before they are added
    # (hook_attn_gate / hook_mlp_gate [1] show the tanh values; hook_attn_out / hook_mlp_out what is added)
    tanh_gated_layers: tuple[int, ...] = ()
    # MoE router (components/moe_router.py): "softmax_topk" (softmax, top-k, renormalised) or "sigmoid_grouped"
    # (GLM-4.5 / DeepSeek-V3: sigmoid scores, choice biased by e_score_correction_bias among the moe_topk_group best of
    # moe_n_group groups, weights renormalised when moe_norm_topk_prob, times moe_routed_scaling)
    # moe_router "sigmoid_topk_input" (Llama 4: top-k of the logits -> sigmoid -> each weight multiplies the chosen
    # expert's INPUT, HF Llama4TextMoe; the experts are nonlinear, so it is another model than weighting the outputs)
    moe_router: str = "softmax_topk"
    moe_n_group: int = 1
    moe_topk_group: int = 1
    moe_norm_topk_prob: bool = True
    moe_routed_scaling: float = 1.0
    # parallel block (Cohere / Command R): ONE input norm ln1 feeds both attention and the MLP, whose outputs are added
    # to the residual together: resid_post = resid_pre + attn(ln1(x)) + mlp(ln1(x)). No ln2 and no hook_resid_mid
    # (no residual exists between the sublayers); hook_attn_out / hook_mlp_out are the two summands
    parallel_block: bool = False
    norm_bias: bool = True  # LayerNorms ("LN", q/k "LN" norms too) with a bias; False = Cohere's (mean-centred, weight only)
    # RoPE on interleaved (even, odd) pairs of each head (Cohere, GPT-J) instead of the two halves (Llama/NeoX)
    rope_interleaved: bool = False
    # the final logits are multiplied by it (Cohere2ForCausalLM's logit_scale); the unembedding applies it, so W_U,
    # the logit lens and direct logit attribution all include it (components/embed.py Unembed)
    logit_scale: float = 1.0
    # --- Gemma 4 parts (docs/architecture.md section 4) ---
    # per layer kind attention geometry: layer_d_head[kind] / layer_n_key_value_heads[kind] replace d_head /
    # n_key_value_heads on the layers of that kind (Gemma 4's global_head_dim, num_global_key_value_heads);
    # attention_cfg(l) is the config a layer's attention reads
    layer_d_head: dict[str, int] | None = None
    layer_n_key_value_heads: dict[str, int] | None = None
    # layer kinds whose values are the key projection (no v_proj: v = k_proj(x) before the k norm; Gemma 4
    # attention_k_eq_v on full-attention layers)
    k_eq_v_layer_types: tuple[str, ...] = ()
    v_norm: bool = False  # a weightless RMS norm over d_head on each value head (Gemma 4), after hook_v
    # KV sharing (Gemma 4 num_kv_shared_layers): the last kv_shared_layers layers compute no keys / values; each reads
    # those of kv_source(l), the last earlier non-sharing layer of its kind (after that layer's norm and RoPE)
    kv_shared_layers: int = 0
    kv_shared_mlp_factor: int = 1  # the MLP of a KV-sharing layer is this many times d_mlp wide (Gemma 4: 2)
    # per-layer inputs (Gemma 4 PLE): a [per_layer_vocab, n_layers * d_per_layer_input] token table plus a projection
    # of the embeddings give every layer a [d_per_layer_input] input, gated by the residual and added after the MLP
    d_per_layer_input: int = 0
    per_layer_vocab: int = 0
    layer_scalar: bool = False  # each block's output residual is multiplied by a stored scalar (Gemma 4)
    # RoPE over equal parts of each head: part i turns (rotate-half within it) by part i of the (cos, sin) table
    # (Gemma 4's vision tower: 2, x positions then y); 1 = the whole head
    rope_axes: int = 1
    # the bidirectional blocks of mask_policy apply only on these layer kinds (Gemma 4: sliding layers); None = all
    mask_policy_layer_types: tuple[str, ...] | None = None
    # the MoE block BESIDE the dense MLP (Gemma 4 enable_moe_block; needs mlp_kind="moe" and sandwich norms): the block
    # keeps its dense mlp and adds moe (components/moe.py), hook_mlp_out = ln2_post(ln_mlp_post(mlp(ln2(x))) +
    # ln_moe_post(moe(ln_moe(x)))), the experts routed from the residual x itself
    moe_beside_dense: bool = False
    # router of the form x -> proj(rms(x) * router_scale * d_model ** -0.5); chosen weights times per_expert_scale
    # (Gemma 4)
    router_norm_scale: bool = False
    # chunked local attention (Llama 4 attention_chunk_size): on "chunked_attention" layers a query sees only the keys
    # of its own chunk of this many positions (chunks counted from each row's first real token, as HF's left-padding
    # offset), on top of the causal mask; shown at blocks.{l}.attn.hook_mask
    attention_chunk_size: int | None = None
    # L2 q/k norm (Llama 4 use_qk_norm): each head's q and k divided by their RMS over d_head (no weight, eps =
    # norm_eps), AFTER RoPE and on rotary layers only, as HF's Llama4TextL2Norm; read at attn.hook_l2_q / hook_l2_k
    qk_l2_norm_after_rope: bool = False
    # attention temperature tuning on NoPE layers (Llama 4 attn_temperature_tuning): queries at absolute position p are
    # multiplied by log1p(floor((p + 1) / attn_temperature_floor)) * attn_temperature_scale + 1; None = off
    attn_temperature_floor: int | None = None
    attn_temperature_scale: float = 0.0

    def attention_cfg(self, layer: int) -> "TowerConfig":
        """The config block ``layer``'s attention reads: this one, with its kind's d_head / n_key_value_heads."""
        kind = self.layer_types[layer] if self.layer_types is not None else None
        changes = {}
        for field_name, per_kind in (("d_head", self.layer_d_head), ("n_key_value_heads", self.layer_n_key_value_heads)):
            if per_kind and kind in per_kind and per_kind[kind] != getattr(self, field_name):
                changes[field_name] = per_kind[kind]
        return dataclasses.replace(self, **changes) if changes else self

    def kv_source(self, layer: int) -> int | None:
        """The layer whose keys and values ``layer`` reads (KV sharing), or None when it computes its own."""
        first = self.n_layers - self.kv_shared_layers
        if self.kv_shared_layers == 0 or layer < first:
            return None
        kind = self.layer_types[layer] if self.layer_types is not None else None
        for source in range(first - 1, -1, -1):
            if (self.layer_types[source] if self.layer_types is not None else None) == kind:
                return source
        raise ValueError(f"layer {layer} shares keys and values (kv_shared_layers={self.kv_shared_layers}) but no "
                         f"earlier layer of its kind {kind!r} computes them")

    def __post_init__(self) -> None:
        check_tower(self)  # hooked_vlm/config_checks.py

    def layer_uses_rope(self, layer: int) -> bool:
        """Whether block ``layer`` rotates q and k: a rotary tower (any positional but "learned" / "none", e.g. Pixtral's
        2-D RoPE), and not a NoPE layer kind (layer_rope_parameters)."""
        if self.positional in ("learned", "none"):
            return False
        if self.layer_rope_parameters is None:
            return True
        return self.layer_rope_parameters.get(self.layer_types[layer]) is not None


@dataclass
class VisionConfig:
    """A ViT image encoder: patch embedding, optional class token, positions, pre-norm blocks."""

    tower: TowerConfig
    image_size: int
    patch_size: int
    kind: str = "vit"  # which tower module builds it (hooked_vlm.components.VISION_KINDS)
    n_channels: int = 3
    class_token: bool = True
    patch_bias: bool = False
    ln_pre: bool = True  # CLIP's pre_layrnorm
    patch_norm: bool = False  # a norm (the tower's kind) on the patch embeddings, before positions (AIMv2 / Ovis 2)
    # Which hidden states feed the projector (HF indexing: 0 = embeddings, i = after block i-1).
    feature_layers: tuple[int, ...] = (-2,)
    feature_select: str = "default"  # "default" drops the class token, "full" keeps it
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific settings

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid_size**2


@dataclass
class VQConfig:
    """A VQ image tokenizer (Chameleon, Emu3): pixels -> discrete codes -> LM token ids, no projector.

    The conv net is the checkpoint family's own HF module (``hf_class``, built from ``hf_config``),
    wrapped by ``hooked_vlm.components.vq``; codes are mapped to LM token ids by ``code_to_token``.
    """

    hf_class: str  # "module:Class" of the HF VQ-VAE
    hf_config_class: str  # "module:Class" of its config
    hf_config: dict[str, Any]
    code_to_token: list[int]  # LM token id of VQ code i
    downsample: int  # pixels per code along each side
    encode: str = "indices"  # "indices": encode(px).image_tokens; "sized": encode(px, image_sizes).image_tokens
    row_break_token_id: int | None = None  # token appended after each row of codes (Emu3 end-of-line)
    kind: str = "vq"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProjectorConfig:
    """The MLP that maps vision features into the language model's residual stream."""

    d_in: int
    d_out: int
    act_fn: str = "gelu"
    bias: bool = True
    kind: str = "mlp"  # which projector module builds it (hooked_vlm.components.PROJECTOR_KINDS)
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific settings


@dataclass
class TokenRoles:
    """Token ids with a structural role; used to build :class:`~hooked_vlm.spans.TokenSpans`."""

    image_token_id: int
    boi_token_id: int | None = None
    eoi_token_id: int | None = None
    row_break_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    extra: dict[str, tuple[int, ...]] = field(default_factory=dict)  # more named roles, e.g. end_of_frame
    # ids whose embedding, when images are given, is row i of ``projector.marker_embeds()`` instead of the token
    # embedding (Ovis 2's visual indicator tokens: rows of its visual embedding table)
    projector_marker_ids: tuple[int, ...] = ()


@dataclass
class HookedVLMConfig:
    """Everything needed to build a :class:`~hooked_vlm.HookedVLM`.

    ``text`` is the language model; its fields are re-exported at the top level under
    TransformerLens names (``cfg.n_layers`` is the number of LM blocks).
    """

    architecture: str  # HF architectures[0], for reporting only: components never read it
    text: TowerConfig
    d_vocab: int
    vision: VisionConfig | VQConfig | None = None
    projector: ProjectorConfig | None = None
    roles: TokenRoles | None = None
    tie_word_embeddings: bool = False
    native_multimodal: bool = False  # trained from scratch on interleaved image-text data
    image_output: bool = False  # can generate images
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)
    # rows of the token-embedding table when it is larger than the unembedding (Mllama: vocab + 8, the image
    # placeholder <|image|> is id vocab_size, embedded but never predicted); None = d_vocab
    d_vocab_embed: int | None = None
    # how the projector's image embeddings enter the stream at the image-token positions: "replace" the token
    # embeddings there (LLaVA and most families), or "add" onto them (Molmo 2: the <im_patch> embedding + the image
    # feature); either way hook_image_embeds is the projector output and hook_embed the stream entering block 0
    image_splice: str = "replace"

    def __post_init__(self) -> None:
        if self.image_splice not in ("replace", "add"):
            raise ValueError(f"image_splice must be 'replace' or 'add', got {self.image_splice!r}")

    # --- TransformerLens-compatible views of the language model ---
    @property
    def n_layers(self) -> int:
        return self.text.n_layers

    @property
    def d_model(self) -> int:
        return self.text.d_model

    @property
    def n_heads(self) -> int:
        return self.text.n_heads

    @property
    def n_key_value_heads(self) -> int:
        return self.text.n_key_value_heads  # type: ignore[return-value]

    @property
    def d_head(self) -> int:
        return self.text.d_head  # type: ignore[return-value]

    @property
    def d_mlp(self) -> int:
        return self.text.d_mlp

    @property
    def normalization_type(self) -> str:
        return self.text.normalization_type

    @property
    def act_fn(self) -> str:
        return self.text.act_fn

    @property
    def n_ctx(self) -> int:
        """TL's context length: the LM's ``max_position_embeddings`` (HF's; RoPE models may run past it)."""
        return self.text.max_position_embeddings

    attn_only: bool = False
    final_rms: bool = False
    positional_embedding_type: str = "rotary"
    model_name: str | None = None  # what from_pretrained was given (hub id, local folder or shipped toy name)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["dtype"] = str(self.dtype)
        return out
