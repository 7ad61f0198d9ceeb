"""TransformerLens's model-level API on HookedVLM: weight views, token helpers, the helpers ActivationCache calls.

:class:`TLCompatMixin` is a base class of :class:`~hooked_vlm.HookedVLM`. Everything here reads the weights as they
are stored (HF's weights, never processed): ``W_*`` / ``b_*`` are views with TransformerLens's names and layouts,
``QK`` / ``OV`` are TL's :class:`~transformer_lens.FactoredMatrix`. TL's weight processing (``fold_ln`` ...) is
not applied to the weights; instead :class:`~hooked_vlm.tl_cache.VLMActivationCache` applies each norm's weight
where TL's folding would have put it, so TL's cache recipes give TL's numbers (docs/architecture.md,
"TransformerLens conventions").

Shapes: attention views are per layer ``[n_layers, head, ...]``; ``W_K`` / ``W_V`` / ``b_K`` / ``b_V`` have one
entry per key/value head (``n_key_value_heads``; TL repeats them up to ``n_heads``), while ``QK`` / ``OV`` repeat
them, as TL's do, so they have ``n_heads`` entries. A missing bias is a zero tensor, as in TL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Sequence

import einops
import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.FactoredMatrix import FactoredMatrix


class TLCompatMixin:
    """TransformerLens names for weights and token helpers (mixed into HookedVLM; ``self`` is the model)."""

    # ------------------------------------------------------------------ weight views (TL names and layouts)
    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.weight

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        """The unembedding as stored (not multiplied by ``ln_final``'s weight: ``ln_final`` applies it); with
        ``cfg.text.logit_scale`` != 1 (Cohere2ForCausalLM) the stored matrix times it (a new tensor, not a view), so
        that logits = ln_final(resid) @ W_U holds and direct logit attribution sums to the logits."""
        scale = self.unembed.scale
        return self.unembed.weight.T if scale == 1.0 else self.unembed.weight.T * scale

    @property
    def b_U(self) -> Float[Tensor, " d_vocab"]:
        """Zeros: no supported family has an unembedding bias (TL's Llama conversion writes zeros too)."""
        return torch.zeros(self.cfg.d_vocab, device=self.unembed.weight.device, dtype=self.unembed.weight.dtype)

    @property
    def W_Q(self) -> Float[Tensor, "n_layers n_heads d_model d_head"]:
        return torch.stack([b.attn.W_Q for b in self._attention_blocks('W_Q')])

    @property
    def W_K(self) -> Float[Tensor, "n_layers n_kv_heads d_model d_head"]:
        return torch.stack([b.attn.W_K for b in self._attention_blocks('W_K')])

    @property
    def W_V(self) -> Float[Tensor, "n_layers n_kv_heads d_model d_head"]:
        return torch.stack([b.attn.W_V for b in self._attention_blocks('W_V')])

    @property
    def W_O(self) -> Float[Tensor, "n_layers n_heads d_head d_model"]:
        return torch.stack([b.attn.W_O for b in self._attention_blocks('W_O')])

    def _attention_blocks(self, what: str) -> list:
        """Every LM block, when every one is attention; else an error naming the other kinds (no stacked weights)."""
        other = sorted({b.mixer_kind for b in self.blocks if not hasattr(b, "attn")})
        if other:
            raise ValueError(f"{what} stacks the attention weights of every layer, but this model has {other} layers "
                             f"(no attention weights there); read model.blocks[l].attn.{what} of its attention layers")
        return list(self.blocks)

    @property
    def b_Q(self) -> Float[Tensor, "n_layers n_heads d_head"]:
        return torch.stack([self._head_bias(b.attn.q_proj, self.cfg.n_heads) for b in self._attention_blocks('b_Q')])

    @property
    def b_K(self) -> Float[Tensor, "n_layers n_kv_heads d_head"]:
        return torch.stack([self._head_bias(b.attn.k_proj, self.cfg.n_key_value_heads) for b in self._attention_blocks('b_K')])

    @property
    def b_V(self) -> Float[Tensor, "n_layers n_kv_heads d_head"]:
        return torch.stack([self._head_bias(b.attn.v_proj, self.cfg.n_key_value_heads) for b in self._attention_blocks('b_V')])

    @property
    def b_O(self) -> Float[Tensor, "n_layers d_model"]:
        return torch.stack([b.attn.b_O for b in self._attention_blocks('b_O')])

    @property
    def W_in(self) -> Float[Tensor, "n_layers d_model d_mlp"]:
        """The up projection (TL's ``W_in``; a gated MLP's gate is ``W_gate``)."""
        return torch.stack([m.W_in for m in self._dense_mlps("W_in")])

    @property
    def W_gate(self) -> Float[Tensor, "n_layers d_model d_mlp"] | None:
        """The gate projection of a gated MLP; None when the MLP is not gated (as TL)."""
        mlps = self._dense_mlps("W_gate")
        return None if not self.cfg.text.gated_mlp else torch.stack([m.W_gate for m in mlps])

    @property
    def W_out(self) -> Float[Tensor, "n_layers d_mlp d_model"]:
        return torch.stack([m.W_out for m in self._dense_mlps("W_out")])

    @property
    def b_in(self) -> Float[Tensor, "n_layers d_mlp"]:
        return torch.stack([self._bias(m.up_proj) for m in self._dense_mlps("b_in")])

    @property
    def b_out(self) -> Float[Tensor, "n_layers d_model"]:
        return torch.stack([m.b_out for m in self._dense_mlps("b_out")])

    @property
    def QK(self) -> "FactoredMatrix":
        """TL's ``FactoredMatrix(W_Q, W_K^T)`` [n_layers, n_heads, d_model, d_model] (key heads repeated under GQA)."""
        from transformer_lens.FactoredMatrix import FactoredMatrix

        return FactoredMatrix(self.W_Q, self._per_query_head(self.W_K).transpose(-2, -1))

    @property
    def OV(self) -> "FactoredMatrix":
        """TL's ``FactoredMatrix(W_V, W_O)`` [n_layers, n_heads, d_model, d_model] (value heads repeated under GQA)."""
        from transformer_lens.FactoredMatrix import FactoredMatrix

        return FactoredMatrix(self._per_query_head(self.W_V), self.W_O)

    def _per_query_head(self, kv: Tensor) -> Tensor:
        return kv.repeat_interleave(self.cfg.n_heads // self.cfg.n_key_value_heads, dim=1)

    def _head_bias(self, proj: torch.nn.Linear, n_heads: int) -> Tensor:
        return self._bias(proj).view(n_heads, self.cfg.d_head)

    @staticmethod
    def _bias(linear: torch.nn.Linear) -> Tensor:
        w = linear.weight
        return linear.bias if linear.bias is not None else torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)

    def _dense_mlps(self, what: str) -> list:
        moe = [l for l, b in enumerate(self.blocks) if not hasattr(b.mlp, "up_proj")]
        if moe:
            raise ValueError(f"{what} is a dense-MLP weight; blocks {moe} are mixture-of-experts layers (their experts "
                             f"are blocks.L.mlp.gate_up_proj / down_proj)")
        return [b.mlp for b in self.blocks]

    # ------------------------------------------------------------------ helpers TL's ActivationCache calls
    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> Tensor:
        """Sum of the output biases (b_O, b_out) written before the input of ``layer`` (TL's accumulated_bias)."""
        bias = torch.zeros(self.cfg.d_model, device=self.device, dtype=self.dtype)
        for l in range(layer):
            bias = bias + self.blocks[l].mixer.b_O
            if include_mlp_biases:
                bias = bias + self.blocks[l].mlp.b_out
        if mlp_input:
            if layer >= self.cfg.n_layers:
                raise ValueError(f"mlp_input=True needs a block: layer must be < n_layers={self.cfg.n_layers}")
            bias = bias + self.blocks[layer].mixer.b_O
        return bias

    def tokens_to_residual_directions(self, tokens: Any) -> Tensor:
        """The unembedding column(s) ``W_U[:, token]`` ([d_model], or [..., d_model] for a tensor of ids).

        The direction a *weighted* normalised residual is dotted with: our cache's ``apply_ln_to_stack`` applies
        ``ln_final``'s weight, so ``cache.logit_attrs`` sums to the logit. (TL's ``fold_ln`` puts the weight here
        instead: its direction is ours times ``ln_final``'s weight; the products are equal.)"""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        tokens = torch.as_tensor(tokens, device=self.unembed.weight.device)
        if tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be token ids (int), got dtype {tokens.dtype}")
        if tokens.numel() == 1:  # TL: one token (a scalar, [1] or [1, 1]) gives one [d_model] direction
            return self.W_U[:, int(tokens.item())]
        return einops.rearrange(self.W_U[:, tokens], "d_model ... -> ... d_model")

    def to_single_token(self, text: str) -> int:
        from .vocab import single_token_id  # raises for a word outside the vocabulary, naming the closest entries

        return single_token_id(self._require_tokenizer(), text)

    def to_single_str_token(self, int_token: int) -> str:
        """The string of one token id (TL's to_single_str_token)."""
        if not isinstance(int_token, int) or not 0 <= int_token < self.cfg.d_vocab:
            raise ValueError(f"int_token must be a token id in 0..{self.cfg.d_vocab - 1}, got {int_token!r}")
        return self._require_tokenizer().convert_ids_to_tokens(int_token)

    # ------------------------------------------------------------------ token helpers
    def to_tokens(self, input: str | Sequence[str], prepend_bos: bool | None = None, padding_side: str | None = None,
                  move_to_device: bool = True, add_special_tokens: bool = True) -> Tensor:
        """Tokenize text only [batch, pos] (image placeholders stay single placeholders; use prepare_inputs for images).

        ``prepend_bos`` (TL's): None keeps the tokenizer's own choice, True makes every row start with BOS, False
        removes the BOS the tokenizer adds. ``padding_side`` "left" / "right" overrides the tokenizer's."""
        tok = self._require_tokenizer()
        texts = [input] if isinstance(input, str) else list(input)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"to_tokens takes a string or a list of strings, got {type(input).__name__}")
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'left', 'right' or None, got {padding_side!r}")
        bos = tok.bos_token_id
        if prepend_bos is not None and bos is None:
            raise ValueError("prepend_bos needs a tokenizer with a BOS token; this one has none")
        rows = []
        for t in texts:
            ids = tok(t, add_special_tokens=add_special_tokens)["input_ids"]
            if prepend_bos and ids[:1] != [bos]:
                ids = [bos] + ids
            elif prepend_bos is False and ids[:1] == [bos] and tok(t, add_special_tokens=False)["input_ids"][:1] != [bos]:
                ids = ids[1:]  # drop the BOS the tokenizer added (not a BOS the text itself spells)
            rows.append(ids)
        kwargs = {} if padding_side is None else {"padding_side": padding_side}
        tokens = tok.pad({"input_ids": rows}, padding=True, return_tensors="pt", **kwargs)["input_ids"]
        return tokens.to(self.device) if move_to_device else tokens

    def to_string(self, tokens: Any) -> str | list[str]:
        """Token ids -> text (TL's to_string): one string for [pos] (or a scalar), a list for [batch, pos]."""
        tokens = torch.as_tensor(tokens)
        if tokens.ndim > 2:
            raise ValueError(f"to_string takes token ids of shape [pos] or [batch, pos], got {tuple(tokens.shape)}")
        tok = self._require_tokenizer()
        if tokens.ndim == 2:
            return tok.batch_decode(tokens.tolist(), clean_up_tokenization_spaces=False)
        return tok.decode(tokens.reshape(-1).tolist(), clean_up_tokenization_spaces=False)

    def get_token_position(self, single_token: str | int | Tensor, input: Any, mode: str = "first",
                           prepend_bos: bool | None = None) -> int:
        """Position of ``single_token`` in ``input`` (TL's get_token_position): a string (tokenized text only), ids
        [pos] or [1, pos], or ``prepare_inputs(...)`` output with one item (positions of the expanded sequence)."""
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', not {mode!r}")
        if isinstance(input, str):
            tokens = self.to_tokens(input, prepend_bos=prepend_bos)
        elif isinstance(input, Mapping):
            tokens = input["input_ids"]
        else:
            tokens = torch.as_tensor(input)
        if tokens.ndim == 2:
            if tokens.shape[0] != 1:
                raise ValueError(f"ids of rank two must have shape [1, pos], not {tuple(tokens.shape)}; pass one row")
            tokens = tokens[0]
        if isinstance(single_token, str):
            single_token = self.to_single_token(single_token)
        single_token = int(torch.as_tensor(single_token).item())
        where = (tokens == single_token).nonzero().flatten()
        if not len(where):
            raise ValueError(f"token {single_token} ({self._require_tokenizer().convert_ids_to_tokens(single_token)!r}) "
                             "does not occur in the input")
        return int(where[0] if mode == "first" else where[-1])

    def to_str_tokens(self, inputs: Any, batch: int = 0, prepend_bos: bool | None = None) -> list[str] | list[list[str]]:
        """String tokens of one batch item; image tokens appear as ``<img r,c>`` (``<img t:r,c>`` with tiles), resampler
        latents as ``<latent k>`` (``<latent t:k>``).

        ``inputs``: ``prepare_inputs(...)`` output (image tokens placed on their grid), text (tokenized text only,
        ``prepend_bos`` as in ``to_tokens``), a list of texts (one list each, as TL), or token ids [pos] / [batch, pos]
        (without the images' layouts, image placeholders show as the placeholder token)."""
        if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, str) for t in inputs):
            return [self.to_str_tokens(t, prepend_bos=prepend_bos) for t in inputs]
        if isinstance(inputs, Mapping):
            tokens, mask = inputs["input_ids"], inputs.get("attention_mask")
            spans = self.spans_for(tokens.to(self.device), None if mask is None else mask.to(self.device),
                                   self._layouts_without_encoding(inputs))
        else:
            tokens = self.to_tokens(inputs, prepend_bos=prepend_bos) if isinstance(inputs, str) else torch.as_tensor(inputs)
            if tokens.ndim not in (1, 2) or tokens.is_floating_point():
                raise ValueError(f"to_str_tokens takes integer token ids [pos] or [batch, pos], got dtype {tokens.dtype} "
                                 f"shape {tuple(tokens.shape)}")
            tokens = tokens[None] if tokens.ndim == 1 else tokens
            tok = self._require_tokenizer()
            return tok.convert_ids_to_tokens(tokens[batch].tolist())
        tok = self._require_tokenizer()
        out, n_latent = [], {}
        for p, t in enumerate(tokens[batch].tolist()):
            img, tile, r, c = spans.grid[batch, p].tolist()
            if t == self.cfg.roles.image_token_id and "row_break" in spans and bool(spans.mask("row_break")[batch, p]):
                out.append("<img newline>")  # an image placeholder holding the image_newline embedding
            elif img >= 0 and spans.layouts[batch][img].latents:  # a resampler latent: its index, no (row, col)
                k = n_latent[img, tile] = n_latent.get((img, tile), -1) + 1
                out.append(f"<latent {k}>" if spans.layouts[batch][img].tiles == 1 else f"<latent {tile}:{k}>")
            elif img >= 0 and r >= 0:
                out.append(f"<img {r},{c}>" if tile <= 0 and spans.layouts[batch][img].tiles == 1 else f"<img {tile}:{r},{c}>")
            elif img >= 0:
                out.append("<img cls>")
            else:
                out.append(tok.convert_ids_to_tokens(t))
        return out

    def _layouts_without_encoding(self, inputs: Mapping) -> list:
        from .model import BASE_INPUTS

        pv = inputs.get("pixel_values")
        if pv is None:
            return []
        extras = {k: v for k, v in inputs.items() if k not in BASE_INPUTS}
        return self.image_layouts(pv, {**extras, "input_ids": inputs["input_ids"].to(self.device)})

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError("this model was loaded without a tokenizer/processor; pass processor= or load a checkpoint that has one")
        return self.tokenizer
