"""The kinds a :class:`~hooked_vlm.config.TowerConfig` field may name, and the checks of a tower's fields against
each other (:func:`check_tower`, run when the config is made). Re-exported by :mod:`hooked_vlm.config`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TowerConfig

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


def check_tower(cfg: "TowerConfig") -> None:
    """Fill the derived defaults (d_head, n_key_value_heads, tuples) and raise ValueError, naming the fields, on any
    combination the components do not implement."""
    if cfg.d_head is None:
        cfg.d_head = cfg.d_model // cfg.n_heads
    if cfg.n_key_value_heads is None:
        cfg.n_key_value_heads = cfg.n_heads
    if cfg.n_heads % cfg.n_key_value_heads:
        raise ValueError(f"n_heads={cfg.n_heads} is not a multiple of n_key_value_heads={cfg.n_key_value_heads}")
    if cfg.norm_placement not in NORM_PLACEMENTS:
        raise ValueError(f"norm_placement must be one of {NORM_PLACEMENTS}, got {cfg.norm_placement!r}")
    if cfg.mask_policy not in MASK_POLICIES:
        raise ValueError(f"mask_policy must be one of {MASK_POLICIES}, got {cfg.mask_policy!r}")
    if cfg.mask_policy != "causal" and not cfg.causal:
        raise ValueError(f"mask_policy {cfg.mask_policy!r} widens a causal mask; this tower is not causal")
    if cfg.mask_policy == "marked_block" and cfg.mask_policy_input is None:
        raise ValueError("mask_policy 'marked_block' needs mask_policy_input (the input marking the block's "
                         "positions with 1, e.g. 'mm_token_type_ids')")
    if cfg.fused_qkv and cfg.attn_output_gate:
        raise ValueError("fused_qkv with attn_output_gate is not implemented (the gate rows sit inside q_proj)")
    if cfg.mask_policy == "prefix" and cfg.mask_policy_input is None:
        raise ValueError("mask_policy 'prefix' needs mask_policy_input (the input marking prefix 0 / suffix 1, "
                         "e.g. 'token_type_ids')")
    for name in ("attn_logit_softcap", "final_logit_softcap"):
        if getattr(cfg, name) is not None and not getattr(cfg, name) > 0:
            raise ValueError(f"{name} must be a positive number or None, got {getattr(cfg, name)!r}")
    if cfg.layer_types is not None:
        cfg.layer_types = tuple(cfg.layer_types)
        bad = sorted(set(cfg.layer_types) - set(LAYER_TYPES))
        if bad or len(cfg.layer_types) != cfg.n_layers:
            raise ValueError(f"layer_types must list one of {LAYER_TYPES} per layer ({cfg.n_layers}); got "
                             f"{len(cfg.layer_types)} entries, unknown kinds {bad}")
        if "sliding_attention" in cfg.layer_types and cfg.sliding_window is None:
            raise ValueError("layer_types has sliding_attention layers but sliding_window is None")
        rotary_kinds = set(cfg.layer_types) & set(ATTENTION_LAYER_TYPES)
        if cfg.layer_rope_parameters is not None and rotary_kinds - set(cfg.layer_rope_parameters):
            raise ValueError(f"layer_rope_parameters has no entry for {sorted(rotary_kinds - set(cfg.layer_rope_parameters))}")
        for kind, name in (("linear_attention", "linear_attention"), ("conv", "short_conv"),
                           ("cross_attention", "cross_attention"),
                           ("window_rel_pos_attention", "rel_pos_attention"),
                           ("global_rel_pos_attention", "rel_pos_attention")):
            if kind in cfg.layer_types and getattr(cfg, name) is None:
                raise ValueError(f"layer_types has {kind} layers but {name} is None: give TowerConfig.{name} "
                                 f"(a {type(cfg).__name__} field describing that mixer)")
    elif cfg.layer_rope_parameters is not None:
        raise ValueError("layer_rope_parameters needs layer_types (which layers use which table)")
    if cfg.mlp_kind not in MLP_KINDS:
        raise ValueError(f"mlp_kind must be one of {MLP_KINDS}, got {cfg.mlp_kind!r}")
    if cfg.mlp_kind == "moe":
        if not 0 < cfg.n_experts_per_tok <= cfg.n_experts or not cfg.d_mlp_expert:
            raise ValueError(f"mlp_kind='moe' needs 0 < n_experts_per_tok ({cfg.n_experts_per_tok}) <= n_experts "
                             f"({cfg.n_experts}) and d_mlp_expert ({cfg.d_mlp_expert})")
        if cfg.moe_layers is not None:
            cfg.moe_layers = tuple(cfg.moe_layers)
            if any(not 0 <= l < cfg.n_layers for l in cfg.moe_layers):
                raise ValueError(f"moe_layers {cfg.moe_layers} must be layers of the {cfg.n_layers}-layer tower")
    if not 0 <= cfg.deepstack_layers <= cfg.n_layers:
        raise ValueError(f"deepstack_layers={cfg.deepstack_layers} must be between 0 and n_layers={cfg.n_layers}")
    if cfg.qk_norm_after_rope and cfg.qk_norm is None:
        raise ValueError("qk_norm_after_rope moves the q / k norms after RoPE, but qk_norm is None (no norms)")
    if cfg.qk_norm_scope not in ("head", "all"):
        raise ValueError(f"qk_norm_scope must be 'head' or 'all', got {cfg.qk_norm_scope!r}")
    if cfg.residual_multiplier != 1.0 and cfg.norm_placement != "pre":
        raise ValueError(f"residual_multiplier is implemented for pre-norm blocks only, not {cfg.norm_placement!r}")
    if cfg.layer_scale and cfg.norm_placement != "pre":
        raise ValueError(f"layer_scale is implemented for pre-norm blocks only, not norm_placement={cfg.norm_placement!r}")
    if cfg.qk_norm_scope == "all" and cfg.qk_norm_per_head:
        raise ValueError("qk_norm_scope='all' normalises all heads together; it cannot have per-head weights")
    if cfg.rotary_dim is not None and not (0 < cfg.rotary_dim <= cfg.d_head and cfg.rotary_dim % 2 == 0):
        raise ValueError(f"rotary_dim={cfg.rotary_dim} must be an even number in (0, d_head={cfg.d_head}]")
    if cfg.moe_router == "sigmoid_grouped" and (cfg.n_experts % cfg.moe_n_group
                                               or not 0 < cfg.moe_topk_group <= cfg.moe_n_group
                                               or cfg.n_experts_per_tok > cfg.moe_topk_group
                                               * (cfg.n_experts // cfg.moe_n_group)):
        raise ValueError(f"moe_router={cfg.moe_router!r}: n_experts ({cfg.n_experts}) must split into "
                         f"moe_n_group ({cfg.moe_n_group}) groups, 0 < moe_topk_group ({cfg.moe_topk_group}) <= "
                         f"moe_n_group, and the kept groups must hold n_experts_per_tok ({cfg.n_experts_per_tok})")
    if cfg.d_mlp_shared_expert is not None and cfg.mlp_kind != "moe":
        raise ValueError("d_mlp_shared_expert is a shared expert beside routed experts: it needs mlp_kind='moe'")
    if cfg.shared_expert_gate and cfg.d_mlp_shared_expert is None:
        raise ValueError("shared_expert_gate needs a shared expert (d_mlp_shared_expert)")
    if cfg.normalization_type not in ("RMS", "LN"):
        raise ValueError(f"normalization_type must be 'RMS' or 'LN', got {cfg.normalization_type!r}")
    cfg.tanh_gated_layers = tuple(cfg.tanh_gated_layers)
    if any(not 0 <= l < cfg.n_layers for l in cfg.tanh_gated_layers):
        raise ValueError(f"tanh_gated_layers {cfg.tanh_gated_layers} must be layers of the {cfg.n_layers}-layer tower")
    if cfg.tanh_gated_layers and cfg.norm_placement != "pre":
        raise ValueError("tanh_gated_layers are implemented for pre-norm blocks only")
    if not cfg.norm_bias and cfg.normalization_type != "LN":
        raise ValueError("norm_bias=False is a LayerNorm without bias; it needs normalization_type='LN' "
                         f"(an RMS norm has no bias), got {cfg.normalization_type!r}")
    if cfg.parallel_block and (cfg.norm_placement != "pre" or cfg.layer_scale):
        raise ValueError("parallel_block is implemented for pre-norm blocks without layer scale, not "
                         f"norm_placement={cfg.norm_placement!r}, layer_scale={cfg.layer_scale}")
    if cfg.attention_chunk_size is not None and not (isinstance(cfg.attention_chunk_size, int)
                                                       and cfg.attention_chunk_size > 0):
        raise ValueError(f"attention_chunk_size must be a positive int or None, got {cfg.attention_chunk_size!r}")
    if cfg.layer_types is not None and "chunked_attention" in cfg.layer_types and cfg.attention_chunk_size is None:
        raise ValueError("layer_types has chunked_attention layers but attention_chunk_size is None")
    if cfg.attn_temperature_floor is not None and not cfg.attn_temperature_floor > 0:
        raise ValueError(f"attn_temperature_floor must be a positive number or None, got {cfg.attn_temperature_floor!r}")
    if cfg.moe_router not in MOE_ROUTERS:
        raise ValueError(f"moe_router must be one of {MOE_ROUTERS}, got {cfg.moe_router!r}")
    if not cfg.logit_scale > 0:
        raise ValueError(f"logit_scale must be a positive number, got {cfg.logit_scale!r}")
    cfg.k_eq_v_layer_types = tuple(cfg.k_eq_v_layer_types)
    if cfg.moe_beside_dense and (cfg.mlp_kind != "moe" or cfg.norm_placement != "sandwich"):
        raise ValueError("moe_beside_dense adds routed experts beside the dense MLP of a sandwich-norm block: it "
                         f"needs mlp_kind='moe' and norm_placement='sandwich', got {cfg.mlp_kind!r}, "
                         f"{cfg.norm_placement!r}")
    if not 0 <= cfg.kv_shared_layers < cfg.n_layers:
        raise ValueError(f"kv_shared_layers={cfg.kv_shared_layers} must be in [0, n_layers={cfg.n_layers})")
    for l in range(cfg.n_layers - cfg.kv_shared_layers, cfg.n_layers):
        cfg.kv_source(l)  # raises when a sharing layer has no source
    if (cfg.d_per_layer_input > 0) != (cfg.per_layer_vocab > 0):
        raise ValueError(f"per-layer inputs need both d_per_layer_input ({cfg.d_per_layer_input}) and "
                         f"per_layer_vocab ({cfg.per_layer_vocab}) > 0, or both 0")
