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


NORM_PLACEMENTS = ("pre", "post_sublayer", "sandwich")
MASK_POLICIES = ("causal", "causal+image_bidirectional", "prefix", "marked_block")
#: token-mixer kinds a ``layer_types`` entry may name (components/mixers.py MIXERS maps each to its mixer class; a
#: kind without a registered class is refused when the block is built)
ATTENTION_LAYER_TYPES = ("sliding_attention", "full_attention", "chunked_attention")
#: encoder self-attention with decomposed relative positions (SAM's ViT): inside non-overlapping windows, or over the
#: whole patch grid (components/rel_pos_attention.py; TowerConfig.rel_pos_attention)
REL_POS_LAYER_TYPES = ("window_rel_pos_attention", "global_rel_pos_attention")
LAYER_TYPES = ATTENTION_LAYER_TYPES + ("linear_attention", "conv", "cross_attention") + REL_POS_LAYER_TYPES
MLP_KINDS = ("dense", "moe")
MOE_ROUTERS = ("softmax_topk", "sigmoid_grouped", "sigmoid_topk_input")


@dataclass
class LinearAttentionConfig:
    """Gated DeltaNet token mixer (``linear_attention`` layers; Qwen3.5, Qwen3-Next): components/gated_deltanet.py."""

    n_key_heads: int  # q / k heads; each serves n_value_heads // n_key_heads consecutive value heads
    n_value_heads: int
    d_key: int  # per-head q / k size
    d_value: int  # per-head v size (and the recurrent state's second axis)
    conv_kernel: int = 4  # the causal depthwise conv over q | k | v (it sees conv_kernel - 1 earlier positions)
    act_fn: str = "silu"  # after the conv
    norm_eps: float = 1e-6  # the gated RMSNorm over d_value
    chunk_size: int = 64  # the chunked algorithm's block length (numbers agree with the recurrent one)

    def __post_init__(self) -> None:
        for name in ("n_key_heads", "n_value_heads", "d_key", "d_value", "conv_kernel", "chunk_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"LinearAttentionConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.n_value_heads % self.n_key_heads:
            raise ValueError(f"n_value_heads={self.n_value_heads} is not a multiple of n_key_heads={self.n_key_heads}")

    @property
    def conv_dim(self) -> int:  # channels of the causal conv: q | k | v
        return 2 * self.n_key_heads * self.d_key + self.n_value_heads * self.d_value


@dataclass
class ShortConvConfig:
    """Short causal convolution token mixer (``conv`` layers; LFM2): a gated depthwise conv of ``kernel`` taps."""

    kernel: int
    bias: bool = False  # on the in-projection, the conv and the out-projection

    def __post_init__(self) -> None:
        if not isinstance(self.kernel, int) or self.kernel < 1:
            raise ValueError(f"ShortConvConfig.kernel must be a positive int, got {self.kernel!r}")


@dataclass
class CrossAttentionConfig:
    """Cross-attention token mixer (``cross_attention`` layers; Mllama): queries from the text stream, keys / values
    from the projected image features (components/cross_attention.py)."""

    n_heads: int
    n_key_value_heads: int
    d_head: int
    qk_norm: str | None = None  # "RMS" | "LN": each head's q (over text) and k (over image keys) normed over d_head
    qk_norm_eps: float = 1e-6
    attn_bias: bool = False  # bias on q, k, v (and o)
    # text rows whose cross-attention mask allows no image key (text before the first image): True = HF Mllama's
    # "full text row" rule: such a row attends to EVERY key (its mask row is all True) and the layer's MLP output is
    # zeroed at that row; False = such a row gets zeros from the attention and keeps its MLP output
    empty_rows_attend_all: bool = True

    def __post_init__(self) -> None:
        for name in ("n_heads", "n_key_value_heads", "d_head"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"CrossAttentionConfig.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.n_heads % self.n_key_value_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_key_value_heads={self.n_key_value_heads}")
        if self.qk_norm not in (None, "RMS", "LN"):
            raise ValueError(f"CrossAttentionConfig.qk_norm must be None, 'RMS' or 'LN', got {self.qk_norm!r}")


@dataclass
class RelPosAttentionConfig:
    """Encoder attention over a square patch grid with decomposed relative positions (SAM's ViT; the layer kinds of
    ``REL_POS_LAYER_TYPES``): ``window_rel_pos_attention`` layers attend within non-overlapping ``window`` x ``window``
    windows (the grid zero-padded to a multiple of ``window`` after the layer's input norm), ``global_rel_pos_attention``
    layers over the whole ``grid`` x ``grid``. ``rel_pos``: each layer adds q . R_h[row_q - row_k] + q . R_w[col_q -
    col_k] to the scores (tables of 2 * size - 1 rows, size = window or grid)."""

    grid: int  # patches per side
    window: int  # window side of the windowed layers
    rel_pos: bool = True

    def __post_init__(self) -> None:
        for name in ("grid", "window"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"RelPosAttentionConfig.{name} must be a positive int, got {getattr(self, name)!r}")


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
    # "prefix" (PaliGemma's prefix-LM): positions whose mask_policy_input (token_type_ids) is 0 -- image + prefix text
    # -- attend to each other in both directions; the rest (the suffix, type 1) is causal. The block is OR-ed on AFTER
    # the sliding window (HF's block_sequence_ids), so the prefix sees all of itself on sliding layers too.
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
    # moe_router "sigmoid_topk_input" (Llama 4: top-k of the logits -> sigmoid -> each weight multiplies the chosen
    # expert's INPUT, HF Llama4TextMoe; the experts are nonlinear, so it is another model than weighting the outputs)

    def __post_init__(self) -> None:
        if self.d_head is None:
            self.d_head = self.d_model // self.n_heads
        if self.n_key_value_heads is None:
            self.n_key_value_heads = self.n_heads
        if self.n_heads % self.n_key_value_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_key_value_heads={self.n_key_value_heads}")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"norm_placement must be one of {NORM_PLACEMENTS}, got {self.norm_placement!r}")
        if self.mask_policy not in MASK_POLICIES:
            raise ValueError(f"mask_policy must be one of {MASK_POLICIES}, got {self.mask_policy!r}")
        if self.mask_policy != "causal" and not self.causal:
            raise ValueError(f"mask_policy {self.mask_policy!r} widens a causal mask; this tower is not causal")
        if self.mask_policy == "marked_block" and self.mask_policy_input is None:
            raise ValueError("mask_policy 'marked_block' needs mask_policy_input (the input marking the block's "
                             "positions with 1, e.g. 'mm_token_type_ids')")
        if self.fused_qkv and self.attn_output_gate:
            raise ValueError("fused_qkv with attn_output_gate is not implemented (the gate rows sit inside q_proj)")
        if self.mask_policy == "prefix" and self.mask_policy_input is None:
            raise ValueError("mask_policy 'prefix' needs mask_policy_input (the input marking prefix 0 / suffix 1, "
                             "e.g. 'token_type_ids')")
        for name in ("attn_logit_softcap", "final_logit_softcap"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number or None, got {getattr(self, name)!r}")
        if self.layer_types is not None:
            self.layer_types = tuple(self.layer_types)
            bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if bad or len(self.layer_types) != self.n_layers:
                raise ValueError(f"layer_types must list one of {LAYER_TYPES} per layer ({self.n_layers}); got "
                                 f"{len(self.layer_types)} entries, unknown kinds {bad}")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise ValueError("layer_types has sliding_attention layers but sliding_window is None")
            rotary_kinds = set(self.layer_types) & set(ATTENTION_LAYER_TYPES)
            if self.layer_rope_parameters is not None and rotary_kinds - set(self.layer_rope_parameters):
                raise ValueError(f"layer_rope_parameters has no entry for {sorted(rotary_kinds - set(self.layer_rope_parameters))}")
            for kind, name in (("linear_attention", "linear_attention"), ("conv", "short_conv"),
                               ("cross_attention", "cross_attention"),
                               ("window_rel_pos_attention", "rel_pos_attention"),
                               ("global_rel_pos_attention", "rel_pos_attention")):
                if kind in self.layer_types and getattr(self, name) is None:
                    raise ValueError(f"layer_types has {kind} layers but {name} is None: give TowerConfig.{name} "
                                     f"(a {type(self).__name__} field describing that mixer)")
        elif self.layer_rope_parameters is not None:
            raise ValueError("layer_rope_parameters needs layer_types (which layers use which table)")
        if self.mlp_kind not in MLP_KINDS:
            raise ValueError(f"mlp_kind must be one of {MLP_KINDS}, got {self.mlp_kind!r}")
        if self.mlp_kind == "moe":
            if not 0 < self.n_experts_per_tok <= self.n_experts or not self.d_mlp_expert:
                raise ValueError(f"mlp_kind='moe' needs 0 < n_experts_per_tok ({self.n_experts_per_tok}) <= n_experts "
                                 f"({self.n_experts}) and d_mlp_expert ({self.d_mlp_expert})")
            if self.moe_layers is not None:
                self.moe_layers = tuple(self.moe_layers)
                if any(not 0 <= l < self.n_layers for l in self.moe_layers):
                    raise ValueError(f"moe_layers {self.moe_layers} must be layers of the {self.n_layers}-layer tower")
        if not 0 <= self.deepstack_layers <= self.n_layers:
            raise ValueError(f"deepstack_layers={self.deepstack_layers} must be between 0 and n_layers={self.n_layers}")
        if self.qk_norm_after_rope and self.qk_norm is None:
            raise ValueError("qk_norm_after_rope moves the q / k norms after RoPE, but qk_norm is None (no norms)")
        if self.qk_norm_scope not in ("head", "all"):
            raise ValueError(f"qk_norm_scope must be 'head' or 'all', got {self.qk_norm_scope!r}")
        if self.residual_multiplier != 1.0 and self.norm_placement != "pre":
            raise ValueError(f"residual_multiplier is implemented for pre-norm blocks only, not {self.norm_placement!r}")
        if self.layer_scale and self.norm_placement != "pre":
            raise ValueError(f"layer_scale is implemented for pre-norm blocks only, not norm_placement={self.norm_placement!r}")
        if self.qk_norm_scope == "all" and self.qk_norm_per_head:
            raise ValueError("qk_norm_scope='all' normalises all heads together; it cannot have per-head weights")
        if self.rotary_dim is not None and not (0 < self.rotary_dim <= self.d_head and self.rotary_dim % 2 == 0):
            raise ValueError(f"rotary_dim={self.rotary_dim} must be an even number in (0, d_head={self.d_head}]")
        if self.moe_router == "sigmoid_grouped" and (self.n_experts % self.moe_n_group
                                                   or not 0 < self.moe_topk_group <= self.moe_n_group
                                                   or self.n_experts_per_tok > self.moe_topk_group
                                                   * (self.n_experts // self.moe_n_group)):
            raise ValueError(f"moe_router={self.moe_router!r}: n_experts ({self.n_experts}) must split into "
                             f"moe_n_group ({self.moe_n_group}) groups, 0 < moe_topk_group ({self.moe_topk_group}) <= "
                             f"moe_n_group, and the kept groups must hold n_experts_per_tok ({self.n_experts_per_tok})")
        if self.d_mlp_shared_expert is not None and self.mlp_kind != "moe":
            raise ValueError("d_mlp_shared_expert is a shared expert beside routed experts: it needs mlp_kind='moe'")
        if self.shared_expert_gate and self.d_mlp_shared_expert is None:
            raise ValueError("shared_expert_gate needs a shared expert (d_mlp_shared_expert)")
        if self.normalization_type not in ("RMS", "LN"):
            raise ValueError(f"normalization_type must be 'RMS' or 'LN', got {self.normalization_type!r}")
        self.tanh_gated_layers = tuple(self.tanh_gated_layers)
        if any(not 0 <= l < self.n_layers for l in self.tanh_gated_layers):
            raise ValueError(f"tanh_gated_layers {self.tanh_gated_layers} must be layers of the {self.n_layers}-layer tower")
        if self.tanh_gated_layers and self.norm_placement != "pre":
            raise ValueError("tanh_gated_layers are implemented for pre-norm blocks only")
        if not self.norm_bias and self.normalization_type != "LN":
            raise ValueError("norm_bias=False is a LayerNorm without bias; it needs normalization_type='LN' "
                             f"(an RMS norm has no bias), got {self.normalization_type!r}")
        if self.parallel_block and (self.norm_placement != "pre" or self.layer_scale):
            raise ValueError("parallel_block is implemented for pre-norm blocks without layer scale, not "
                             f"norm_placement={self.norm_placement!r}, layer_scale={self.layer_scale}")
        if self.attention_chunk_size is not None and not (isinstance(self.attention_chunk_size, int)
                                                           and self.attention_chunk_size > 0):
            raise ValueError(f"attention_chunk_size must be a positive int or None, got {self.attention_chunk_size!r}")
        if self.layer_types is not None and "chunked_attention" in self.layer_types and self.attention_chunk_size is None:
            raise ValueError("layer_types has chunked_attention layers but attention_chunk_size is None")
        if self.attn_temperature_floor is not None and not self.attn_temperature_floor > 0:
            raise ValueError(f"attn_temperature_floor must be a positive number or None, got {self.attn_temperature_floor!r}")
        if self.moe_router not in MOE_ROUTERS:
            raise ValueError(f"moe_router must be one of {MOE_ROUTERS}, got {self.moe_router!r}")
        if not self.logit_scale > 0:
            raise ValueError(f"logit_scale must be a positive number, got {self.logit_scale!r}")
        self.k_eq_v_layer_types = tuple(self.k_eq_v_layer_types)
        if self.moe_beside_dense and (self.mlp_kind != "moe" or self.norm_placement != "sandwich"):
            raise ValueError("moe_beside_dense adds routed experts beside the dense MLP of a sandwich-norm block: it "
                             f"needs mlp_kind='moe' and norm_placement='sandwich', got {self.mlp_kind!r}, "
                             f"{self.norm_placement!r}")
        if not 0 <= self.kv_shared_layers < self.n_layers:
            raise ValueError(f"kv_shared_layers={self.kv_shared_layers} must be in [0, n_layers={self.n_layers})")
        for l in range(self.n_layers - self.kv_shared_layers, self.n_layers):
            self.kv_source(l)  # raises when a sharing layer has no source
        if (self.d_per_layer_input > 0) != (self.per_layer_vocab > 0):
            raise ValueError(f"per-layer inputs need both d_per_layer_input ({self.d_per_layer_input}) and "
                             f"per_layer_vocab ({self.per_layer_vocab}) > 0, or both 0")

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
