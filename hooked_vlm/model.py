"""HookedVLM: embed -> splice image embeddings -> blocks -> unembed, every step hooked.

TransformerLens's ``HookedRootModule`` gives ``run_with_hooks``, ``hooks()``, ``add_hook`` and
``reset_hooks``; we add image inputs, token spans, a KV cache for generation and checks with
clear errors. Family differences live in the config and in ``converters/``, never here.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from jaxtyping import Int
from torch import Tensor, nn
from transformer_lens.HookedRootModule import HookedRootModule

from .activation_cache import check_one_item, pos_sliced_hooks
from .components.block import TransformerBlock
from .components.embed import Embed, Unembed
from .components.layer_rotary import build_rotary
from .components.mask_policy import layer_masks, policy_block_ids
from .components.masks import AttentionMask
from .components.norms import make_norm
from .components import build_projector, build_vision
from .config import HookedVLMConfig
from .hook_points import HookPoint, RunState
from .components.per_layer_inputs import PerLayerInputs
from .kv_cache import KVCache, layer_states
from .pipelines import LAYOUTS, PIPELINES
from .saes.splice import SAEMixin
from .spans import TokenSpans, build_spans
from .tl_cache import VLMActivationCache
from .tl_compat import TLCompatMixin

if TYPE_CHECKING:
    from .cache_buffers import CacheBuffers
    from .vocab import VocabRoles

#: forward() keyword inputs every model takes; families add theirs in cfg.extra["input_keys"]
BASE_INPUTS = ("input_ids", "pixel_values", "attention_mask", "position_ids")


class HookedVLM(SAEMixin, TLCompatMixin, HookedRootModule):  # add_sae, saes(), run_with_saes (hooked_vlm.saes);
    # TL weight views and token helpers (hooked_vlm.tl_compat)
    """A vision-language model in one hooked architecture: vision tower -> projector -> language model.

    Load one with ``HookedVLM.from_pretrained(name_or_path)`` (a hub id, a local folder, or a shipped toy such as
    ``"toy-llava"``), prepare inputs with ``prepare_inputs(images=..., text=...)``, then use TransformerLens's API:
    ``model(**inputs)`` (logits ``[batch, pos, d_vocab]``), ``run_with_cache``, ``run_with_hooks``, ``hooks()``,
    ``generate`` (hooks stay active), the TL weight views (``W_Q``, ``W_U``, ...) and token helpers, and SAELens's
    ``add_sae`` / ``run_with_saes``. Every hook sees ``hook.spans``, the role of every position of the forward.
    """
    def __init__(self, cfg: HookedVLMConfig, processor: Any = None):
        super().__init__()
        self.cfg = cfg
        self.processor = processor
        self.device_map: dict[str, str] | None = None  # {module: device} when loaded with device_map= (hooked_vlm.devices)
        self._main_device: torch.device | None = None  # with a device map: where inputs go
        t = cfg.text
        self.embed = Embed(cfg.d_vocab_embed or cfg.d_vocab, t.d_model, scale=t.embed_scale)
        self.vision = build_vision(cfg.vision)
        self.projector = build_projector(cfg.projector)
        if cfg.vision is not None:  # a text-only model has no image path (hooks that never fire are not created)
            # [n_image_tokens, d_model] (projector output, before splicing); cross-attention models
            # (text.cross_attention): [batch, key, d_model], the image features every cross-attention layer reads
            self.hook_image_embeds = HookPoint()
        self.hook_embed = HookPoint()  # [batch, pos, d_model] (token embeddings; image positions hold image embeds, or
        #                                  the sum of both with cfg.image_splice="add")
        self.rotary = build_rotary(t)  # one RoPE table, one per layer kind (layer_rope_parameters), or None
        self.blocks = nn.ModuleList([TransformerBlock(t, l) for l in range(t.n_layers)])
        self.per_layer_inputs = PerLayerInputs(t) if t.d_per_layer_input else None  # Gemma 4 PLE
        for block in self.blocks[: t.deepstack_layers]:  # [n_image_tokens, d_model], added after hook_resid_post
            block.hook_deepstack = HookPoint()
        self.ln_final = make_norm(t.normalization_type, t.d_model, t.norm_eps, t.norm_offset, bias=t.norm_bias)
        self.unembed = Unembed(t.d_model, cfg.d_vocab, scale=t.logit_scale)  # logits * t.logit_scale (Cohere2)
        self.tie_weights()
        self.setup()
        self.run_state = RunState()
        for hp in self.hook_points():
            hp.run = self.run_state

    def tie_weights(self) -> None:
        """Share W_E and W_U when the checkpoint ties them (call again after materialising from 'meta')."""
        if self.cfg.tie_word_embeddings:
            self.unembed.weight = self.embed.weight

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        **kwargs: Any,
    ) -> "HookedVLM":
        """Load an HF checkpoint (hub id or local folder: the same code path) into a HookedVLM.

        ``device_map="auto"`` (with ``max_memory={"cuda:0": "20GiB", ...}``, ``offload="cpu"`` or an offload folder)
        or a dict {module: device} spreads the model over devices, CPU RAM and disk: see ``hooked_vlm.devices``."""
        from .loading import load_pretrained

        return load_pretrained(cls, name_or_path, dtype=dtype, device=device, **kwargs)

    @property
    def vocab_roles(self) -> VocabRoles:
        """Image-code vs text token ids (``hooked_vlm.vocab``); empty image-code set for non-native families."""
        from .vocab import VocabRoles

        cached = getattr(self, "_vocab_roles", None)
        if cached is None or cached.image_code_ids.device != self.device:
            cached = self._vocab_roles = VocabRoles.from_config(self.cfg, self.device)
        return cached

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's device (with a device map, the map's main device)."""
        return self._main_device if self._main_device is not None else self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Int[Tensor, "batch pos"] | Mapping | None = None,
        pixel_values: Tensor | None = None,
        attention_mask: Int[Tensor, "batch key_pos"] | None = None,
        position_ids: Int[Tensor, "batch pos"] | Int[Tensor, "3 batch pos"] | None = None,  # 3-D: M-RoPE
        *,
        return_type: str | None = "logits",
        stop_at_layer: int | None = None,
        kv_cache: KVCache | None = None,
        spans: TokenSpans | None = None,
        logits_to_keep: int = 0,
        **extras: Any,
    ) -> Any:
        """Run the model. Takes ``model.prepare_inputs(...)`` or an HF processor's output (``model(**inputs)``).

        return_type: "logits" [batch, pos, d_vocab], "loss" (next-token loss on text targets),
        "both", or None. ``stop_at_layer=l`` returns the residual stream entering block l.
        ``logits_to_keep=n`` (HF's argument; 0 = every position) unembeds only the last n positions: generate's
        prefill uses 1, as HF's does. Every hook still sees every position (the unembed has no hook).
        """
        if isinstance(input_ids, Mapping):
            merged = dict(input_ids)
            merged.update({k: v for k, v in dict(pixel_values=pixel_values, attention_mask=attention_mask,
                                                 position_ids=position_ids).items() if v is not None})
            merged.update(extras)
            return self.forward(**merged, return_type=return_type, stop_at_layer=stop_at_layer, kv_cache=kv_cache,
                                spans=spans, logits_to_keep=logits_to_keep)
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int >= 0 (0: logits at every position), got {logits_to_keep!r}")
        if logits_to_keep and return_type in ("loss", "both"):
            raise ValueError(f"return_type={return_type!r} needs the logits at every position: drop logits_to_keep")
        past = kv_cache.length if kv_cache is not None else 0
        if kv_cache is not None:
            kv_cache.check_layers(tuple(block.mixer_kind for block in self.blocks))
        self._check_inputs(input_ids, extras, attention_mask, past)
        tokens = input_ids.to(self.device)
        b, q_len = tokens.shape
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)

        if pixel_values is not None and self.vision is None:
            raise ValueError(f"this {self.cfg.architecture} model was converted without an image tower (its config has "
                             "no vision_config): pass text only (no pixel_values)")
        # the spans first (image layouts from the inputs alone), so that every hook of this forward -- the vision
        # tower's, the projector's and hook_image_embeds included -- sees this forward's hook.spans
        image_extras = {**extras, "input_ids": tokens}
        layouts = self.image_layouts(pixel_values, image_extras) if pixel_values is not None else []
        if pixel_values is not None:
            self._check_image_token_count(tokens, sum(layout.n_tokens for layout in layouts))
        elif self.cfg.roles is not None and past == 0 and (tokens == self.cfg.roles.image_token_id).any():
            raise ValueError(
                f"the prompt holds {(tokens == self.cfg.roles.image_token_id).sum().item()} image tokens but no "
                "pixel_values were given; pass the images (model.prepare_inputs(images=..., text=...)) "
                "or remove the image placeholders"
            )
        if spans is None:
            spans = self.spans_for(tokens, attention_mask, layouts)
            marks = extras.get(self.cfg.text.mask_policy_input) if self.cfg.text.mask_policy == "prefix" else None
            if marks is not None and past == 0:  # prefix-LM: prefix / suffix spans from the same input as the mask
                spans = spans.with_prefix_suffix(marks)
        self.run_state.spans = spans
        self.run_state.query_positions = torch.arange(past, past + q_len, device=self.device)

        resid = self.embed(tokens)
        deepstack, cross_images = [], None
        if pixel_values is not None:
            image_embeds, encoded, *more = self.encode_images(pixel_values, image_extras)
            if encoded != layouts:
                raise RuntimeError(f"image pipeline {self.cfg.extra.get('image_pipeline', 'vit_mlp')!r}: its layouts "
                                   f"function gave {layouts} but encoding gave {encoded}; the two must agree (a bug in "
                                   "hooked_vlm/pipelines)")
            deepstack = more[0] if more else []  # DeepStack features, one per early block
            if len(deepstack) != self.cfg.text.deepstack_layers:
                raise ValueError(f"the image pipeline gave {len(deepstack)} DeepStack features for "
                                 f"{self.cfg.text.deepstack_layers} DeepStack blocks (text.deepstack_layers)")
            if self.cfg.text.cross_attention is not None:  # the image reaches the text only as cross-attention keys
                cross_images = self.hook_image_embeds(image_embeds)
            else:
                image_embeds = self.hook_image_embeds(image_embeds)
                if self.cfg.image_splice == "add":  # Molmo 2: the features are added onto the <im_patch> embeddings
                    self._check_image_token_count(tokens, image_embeds.shape[0])
                    resid = self._splice_add(tokens, resid, image_embeds)
                else:
                    resid = self._splice(tokens, resid, image_embeds)
            if self.cfg.roles.projector_marker_ids:  # marker tokens embedded by the projector (Ovis 2's indicators)
                resid = self._splice_markers(tokens, resid)
        if self.cfg.text.embedding_multiplier != 1.0:  # Granite: the whole stream, image embeddings included
            resid = resid * self.cfg.text.embedding_multiplier
        resid = self.hook_embed(resid)

        position_fn = self.cfg.extra.get("position_fn")
        if position_fn is not None:  # e.g. "mrope": [3, batch, pos] from the tokens and image grids
            from .positions import POSITION_FNS

            position_ids = POSITION_FNS[position_fn](self, tokens, attention_mask, position_ids, kv_cache, extras)
        elif position_ids is None:
            position_ids = self.run_state.query_positions[None].expand(b, -1) + self.cfg.text.position_offset
        position_ids = position_ids.to(self.device)
        key_padding = self._key_padding(attention_mask, kv_cache, b, past + q_len)
        mask = AttentionMask(
            causal=self.cfg.text.causal,
            key_padding=key_padding,
            query_positions=self.run_state.query_positions,
            k_len=past + q_len,
            sliding_window=self.cfg.text.sliding_window,
        )
        masks = layer_masks(self.cfg.text, mask, policy_block_ids(self.cfg.text, spans, extras, past))
        rotary = self.rotary(position_ids, resid.dtype) if self.rotary is not None else None
        rotaries = rotary if isinstance(rotary, list) else [rotary] * self.cfg.n_layers
        n_run = self.cfg.n_layers if stop_at_layer is None else stop_at_layer
        states = layer_states(self.cfg.text, kv_cache)  # KV-sharing layers get their source layer's state
        if self.cfg.text.cross_attention is not None:  # image keys and mask rows of this forward, per layer state
            from .pipelines.cross_tiles import begin_cross_attention, key_spans_for

            states = begin_cross_attention(self, list(states), cross_images, extras.get("cross_attention_mask"), past,
                                           q_len)
            if cross_images is not None:  # the key axis's roles (hooked_vlm.key_spans); decode steps keep the prompt's
                self.run_state.extra["kv_spans"] = key_spans_for(self, extras)
            elif past == 0:
                self.run_state.extra.pop("kv_spans", None)
        per_layer = self._per_layer_inputs(tokens, resid)
        for l, block in enumerate(self.blocks[:n_run]):
            resid = block(resid, masks[l], rotaries[l], states[l], None if per_layer is None else per_layer[:, :, l])
            if l < len(deepstack):
                resid = self._splice_add(tokens, resid, block.hook_deepstack(deepstack[l]))
        if kv_cache is not None:
            kv_cache.length = past + q_len
        if stop_at_layer is not None:
            return resid
        normed = self.ln_final(resid)
        logits = self.unembed(normed[:, -logits_to_keep:] if logits_to_keep else normed)
        cap = self.cfg.text.final_logit_softcap
        if cap is not None:  # Gemma 2: tanh soft-capping of the final logits
            logits = torch.tanh(logits / cap) * cap
        logits = self._postprocess_logits(logits)
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        loss = self.loss(logits, tokens, spans)
        return loss if return_type == "loss" else (logits, loss)

    def _per_layer_inputs(self, tokens: Tensor, embeds: Tensor) -> Tensor | None:
        """Gemma 4 PLE [batch, pos, layer, d]: the token part looks up the pad id at image placeholders (as HF)."""
        if self.per_layer_inputs is None:
            return None
        roles = self.cfg.roles
        if roles is not None and roles.pad_token_id is None:
            raise ValueError("per-layer inputs need the pad token id (TokenRoles.pad_token_id) for image positions")
        if roles is not None:
            tokens = torch.where(tokens == roles.image_token_id, torch.full_like(tokens, roles.pad_token_id), tokens)
        return self.per_layer_inputs(tokens, embeds)

    def _postprocess_logits(self, logits: Tensor) -> Tensor:
        """Vocabulary suppression some families apply (e.g. image-code ids in text mode)."""
        suppressed = self.cfg.extra.get("suppress_token_ids")
        if suppressed:
            logits[..., torch.as_tensor(suppressed, device=logits.device)] = torch.finfo(logits.dtype).min
        return logits

    def loss(self, logits: Tensor, tokens: Tensor, spans: TokenSpans) -> Tensor:
        """Mean next-token cross-entropy over targets that are text (not image, not padding)."""
        target_ok = spans.mask("text")[:, 1:].to(logits.device)  # the unembed's device under a device map
        lp = logits[:, :-1].float().log_softmax(-1).gather(-1, tokens[:, 1:, None].to(logits.device))[..., 0]
        return -(lp * target_ok).sum() / target_ok.sum().clamp(min=1)

    def _key_padding(self, attention_mask: Tensor | None, kv_cache: KVCache | None, b: int, k_len: int) -> Tensor | None:
        if kv_cache is None:
            return None if attention_mask is None or bool(attention_mask.all()) else attention_mask.bool()
        if attention_mask is not None:
            if attention_mask.shape[1] == k_len:
                full = attention_mask.bool()
            else:  # mask of the new positions only
                prev = kv_cache.key_padding if kv_cache.key_padding is not None else torch.ones(b, k_len - attention_mask.shape[1], dtype=torch.bool, device=self.device)
                full = torch.cat([prev, attention_mask.bool()], 1)
        else:
            prev = kv_cache.key_padding
            full = None if prev is None else torch.cat([prev, torch.ones(b, k_len - prev.shape[1], dtype=torch.bool, device=self.device)], 1)
        kv_cache.key_padding = full
        return None if full is None or bool(full.all()) else full

    def _check_inputs(self, input_ids: Any, extras: dict, attention_mask: Any = None, past: int = 0) -> None:
        if input_ids is None:
            raise ValueError("input_ids is required (use model.prepare_inputs(images=..., text=...))")
        if not isinstance(input_ids, Tensor) or input_ids.ndim != 2:
            raise ValueError(f"input_ids must be a [batch, pos] LongTensor, got {getattr(input_ids, 'shape', type(input_ids))}")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must hold integer token ids (a LongTensor), got dtype {input_ids.dtype}")
        if input_ids.numel():
            lo, hi = int(input_ids.min()), int(input_ids.max())
            n_embed = self.cfg.d_vocab_embed or self.cfg.d_vocab
            if lo < 0 or hi >= n_embed:
                raise ValueError(f"input_ids hold token id {lo if lo < 0 else hi}, outside the vocabulary "
                                 f"(0..{n_embed - 1}); were they made by another model's tokenizer?")
        if attention_mask is not None:
            b, q_len = input_ids.shape
            lengths = (q_len,) if past == 0 else (q_len, past + q_len)
            if not isinstance(attention_mask, Tensor) or attention_mask.ndim != 2 or attention_mask.shape[0] != b \
                    or attention_mask.shape[1] not in lengths:
                raise ValueError(f"attention_mask has shape {tuple(getattr(attention_mask, 'shape', ()))}; for input_ids of "
                                 f"shape {(b, q_len)} it must be [batch, pos] = {(b, q_len)}"
                                 + (f" or [batch, past + pos] = {(b, past + q_len)}" if past else ""))
        refused = {k: why for k, why in self.cfg.extra.get("refused_inputs", {}).items() if extras.get(k) is not None}
        if refused:  # inputs HF takes that this family's converter does not implement (e.g. Qwen3-VL videos)
            raise ValueError("; ".join(f"{k}: {why}" for k, why in sorted(refused.items())))
        allowed = set(self.cfg.extra.get("input_keys", ())) | set(self.cfg.extra.get("refused_inputs", {})) | {"token_type_ids"}
        unknown = sorted(set(extras) - allowed)
        if unknown:
            raise TypeError(
                f"unexpected input(s) {unknown} for {self.cfg.architecture}; this model takes "
                f"{', '.join(BASE_INPUTS + tuple(sorted(allowed - {'token_type_ids'})))}"
            )

    # ------------------------------------------------------------------ images
    def encode_images(self, pixel_values: Tensor, extras: dict | None = None):
        """pixel_values -> (image embeddings [n_image_tokens, d_model], layout of each image)."""
        pipeline = PIPELINES[self.cfg.extra.get("image_pipeline", "vit_mlp")]
        return pipeline(self, pixel_values.to(self.device), extras or {})

    def image_layouts(self, pixel_values: Tensor, extras: dict | None = None) -> list:
        """The layout of each image (``ImageLayout``) from the inputs alone, without running the vision tower."""
        layouts = LAYOUTS[self.cfg.extra.get("image_pipeline", "vit_mlp")]
        return layouts(self, pixel_values.to(self.device), extras or {})

    def _check_image_token_count(self, tokens: Tensor, n_feats: int) -> None:
        n_slots = int((tokens == self.cfg.roles.image_token_id).sum())
        if n_slots != n_feats:
            raise ValueError(
                f"the prompt holds {n_slots} image tokens but the images give {n_feats} image embeddings; "
                "there must be one image per image placeholder and each placeholder expanded to the image's "
                "token count (use model.prepare_inputs or the checkpoint's processor)"
            )

    def _splice(self, tokens: Tensor, embeds: Tensor, image_embeds: Tensor) -> Tensor:
        is_image = tokens == self.cfg.roles.image_token_id
        self._check_image_token_count(tokens, image_embeds.shape[0])
        return embeds.masked_scatter(is_image[..., None], image_embeds.to(embeds.device, embeds.dtype))

    def _splice_markers(self, tokens: Tensor, embeds: Tensor) -> Tensor:
        """embeds with row i of ``projector.marker_embeds()`` at every position holding ``projector_marker_ids[i]``."""
        ids = torch.tensor(self.cfg.roles.projector_marker_ids, device=tokens.device)
        hit = tokens[..., None] == ids  # [batch, pos, n_markers]
        if not hit.any():
            return embeds
        rows = self.projector.marker_embeds().to(embeds.device, embeds.dtype)  # [n_markers, d_model]
        return torch.where(hit.any(-1, keepdim=True), hit.to(embeds.dtype) @ rows, embeds)

    def _splice_add(self, tokens: Tensor, resid: Tensor, features: Tensor) -> Tensor:
        """resid with ``features`` [n_image_tokens, d_model] added at the image positions (in splice order)."""
        is_image = (tokens == self.cfg.roles.image_token_id)[..., None].to(resid.device)  # the block's device
        return resid.masked_scatter(is_image, resid[is_image[..., 0]] + features.to(resid.device, resid.dtype))

    def spans_for(self, tokens: Tensor, attention_mask: Tensor | None, layouts: list) -> TokenSpans:
        from .config import TokenRoles

        roles = self.cfg.roles or TokenRoles(image_token_id=-1)
        spans = build_spans(tokens, attention_mask, roles, layouts)
        if self.cfg.extra.get("image_markers"):  # e.g. ("boi", "eoi"): every image sits between them
            from .span_checks import check_image_markers

            check_image_markers(spans, *self.cfg.extra["image_markers"], self.cfg.extra.get("marker_names"))
        return spans

    # ------------------------------------------------------------------ hooks and caches
    def _resolve_hook_name(self, name: Any) -> None:
        if isinstance(name, str) and name not in self.hook_dict:
            close = difflib.get_close_matches(name, list(self.hook_dict), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise KeyError(f"no hook point named {name!r}.{hint} (model.hook_dict lists all {len(self.hook_dict)} names)")

    def add_hook(self, name: Any, hook: Callable, dir: str = "fwd", **kwargs: Any) -> None:  # type: ignore[override]
        self._resolve_hook_name(name)
        super().add_hook(name, hook, dir=dir, **kwargs)

    def _enable_hook(self, name: Any, hook: Callable, dir: str) -> None:  # type: ignore[override]
        self._resolve_hook_name(name)
        super()._enable_hook(name, hook, dir)

    def run_with_cache(self, *args: Any, names_filter: Any = None, remove_batch_dim: bool = False,  # type: ignore[override]
                       cache_device: Any = None, **kwargs: Any):
        """Like TransformerLens: returns (output, ActivationCache); ``cache.spans`` holds the spans.

        ``cache_device`` (TL's ``device``): where cached tensors go; default where each was computed (under a device
        map, its block's device; pass e.g. "cpu" to gather them on one device). ``pos_slice`` slices the sequence
        positions of LM entries only; ``remove_batch_dim`` needs a one-item batch (hooked_vlm.activation_cache)."""
        if cache_device is not None:
            if kwargs.get("device") is not None:
                raise ValueError("give cache_device or device (TransformerLens's name for it), not both")
            kwargs["device"] = cache_device
        if isinstance(names_filter, str):
            self._resolve_hook_name(names_filter)
        elif isinstance(names_filter, (list, tuple)):
            for n in names_filter:
                self._resolve_hook_name(n)
        if remove_batch_dim:
            check_one_item(args, kwargs)
        buffers = self._cache_buffers()
        buffers.active, buffers.reused = True, 0
        self.run_state.extra["cache_buffers"] = buffers
        try:
            out, cache_dict = super().run_with_cache(*args, names_filter=names_filter, remove_batch_dim=False, **kwargs)
        finally:
            buffers.active = False
            self.run_state.extra.pop("cache_buffers", None)
        buffers.keep(cache_dict, self.hook_dict)
        cache = VLMActivationCache(cache_dict, self, spans=self.run_state.spans,  # hooked_vlm.tl_cache
                                   kv_spans=self.run_state.extra.get("kv_spans"))  # cross-attention: the key axis
        return out, cache.remove_batch_dim() if remove_batch_dim else cache

    def get_caching_hooks(self, names_filter: Any = None, incl_bwd: bool = False, device: Any = None,  # type: ignore[override]
                          remove_batch_dim: bool = False, cache: dict | None = None, pos_slice: Any = None):
        """TL's caching hooks; ``pos_slice`` slices the sequence positions of LM entries only (TL picks the axis
        from the hook's name and would slice image tokens, vision patches or the heads of hook_rot_q/k)."""
        cache, fwd, bwd = super().get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim=False, cache=cache)
        return (cache, *pos_sliced_hooks(fwd, bwd, pos_slice, remove_batch_dim))

    def _cache_buffers(self) -> "CacheBuffers":
        from .cache_buffers import CacheBuffers

        if getattr(self, "_buffers_of_last_cache", None) is None:
            self._buffers_of_last_cache = CacheBuffers()
        return self._buffers_of_last_cache

    def free_cache_buffers(self) -> None:
        """Drop the last cache's attention tensors that the next ``run_with_cache`` would reuse (hooked_vlm.cache_buffers)."""
        self._cache_buffers().clear()

    # ------------------------------------------------------------------ inputs and generation
    def prepare_inputs(self, images: Any = None, text: str | Sequence[str] | None = None, **kwargs: Any) -> dict[str, Tensor]:
        """Run the checkpoint's HF processor and move the tensors to the model's device/dtype."""
        from .inputs import prepare_inputs

        return prepare_inputs(self, images=images, text=text, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Greedy or sampled generation with a KV cache; active hooks stay active. See ``hooked_vlm.generation``."""
        from .generation import generate

        return generate(self, *args, **kwargs)
