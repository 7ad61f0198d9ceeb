"""Vocabulary roles: which LM token ids are image codes (native multimodal models) and which are text.

Chameleon and Emu3 write images as VQ-code tokens in the same vocabulary as text, so a logit lens
over such a model should report the text and the image-code readouts separately:

    roles = model.vocab_roles
    text_logits = logits[..., roles.text_ids]          # [..., n_text]
    best_text = roles.text_ids[text_logits.argmax(-1)]  # back to token ids

Families without image codes get an empty ``image_code_ids``. Also here: marker roles whose ids
live only in the tokenizer (``cfg.extra["marker_tokens"]``, e.g. Janus' <begin_of_image>).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .summary import summary_repr


@dataclass
class VocabRoles:
    __repr__ = summary_repr  # a short summary, not the tensors (hooked_vlm.summary)

    image_code_ids: Int[Tensor, " n_image_codes"]  # sorted token ids of image codes
    text_ids: Int[Tensor, " n_text"]  # every other token id, sorted
    d_vocab: int

    @classmethod
    def from_config(cls, cfg: Any, device: str | torch.device = "cpu") -> "VocabRoles":
        codes = torch.as_tensor(sorted(set(cfg.extra.get("image_code_ids", ()))), dtype=torch.long, device=device)
        is_code = torch.zeros(cfg.d_vocab, dtype=torch.bool, device=device)
        is_code[codes] = True
        return cls(image_code_ids=codes, text_ids=(~is_code).nonzero().flatten(), d_vocab=cfg.d_vocab)

    def is_image_code(self, ids: Int[Tensor, "..."]) -> Bool[Tensor, "..."]:
        return torch.isin(ids, self.image_code_ids.to(ids.device))

    def split(self, logits: Float[Tensor, "... d_vocab"]) -> tuple[Tensor, Tensor]:
        """(text readout [..., n_text], image-code readout [..., n_image_codes]) of full-vocabulary logits."""
        if logits.shape[-1] != self.d_vocab:
            raise ValueError(f"logits have {logits.shape[-1]} entries in the last dim; the vocabulary has {self.d_vocab}")
        return logits[..., self.text_ids.to(logits.device)], logits[..., self.image_code_ids.to(logits.device)]

    def top_k(self, logits: Float[Tensor, "... d_vocab"], k: int = 5, which: str = "text") -> tuple[Tensor, Tensor]:
        """(values, token ids) of the top-k entries among the ``"text"`` or ``"image"`` vocabulary."""
        if which not in ("text", "image"):
            raise ValueError(f"which must be 'text' or 'image', got {which!r}")
        part = self.split(logits)[0 if which == "text" else 1]
        ids = self.text_ids if which == "text" else self.image_code_ids
        if part.shape[-1] == 0:
            raise ValueError("this model has no image-code vocabulary")
        values, idx = part.topk(min(k, part.shape[-1]), dim=-1)
        return values, ids.to(idx.device)[idx]


def resolve_marker_tokens(cfg: Any, processor: Any) -> None:
    """Fill marker roles named by token string in ``cfg.extra["marker_tokens"]`` from the processor's tokenizer.

    A converter's ``finalize`` hook (called by the loader once the processor is known)."""
    markers = cfg.extra.get("marker_tokens")
    roles = cfg.roles
    if not markers or roles is None:
        return
    tok = getattr(processor, "tokenizer", processor)
    if tok is None:
        warnings.warn(f"no tokenizer: the spans {sorted(markers)} ({', '.join(markers.values())}) cannot be located; "
                      "load with processor=... to get them")
        return
    for role, text in markers.items():
        tid = tok.convert_tokens_to_ids(text)
        if tid is None or tid == getattr(tok, "unk_token_id", None):
            warnings.warn(f"the tokenizer has no {text!r} token; span {role!r} will be empty")
            continue
        if role in ("boi", "eoi"):
            setattr(roles, f"{role}_token_id", int(tid))
        else:
            roles.extra[role] = (int(tid),)


_WORD_PREFIXES = ("\u2581", "\u0120")  # SentencePiece's and byte-level BPE's word-start marks


def closest_tokens(tokenizer: Any, text: str, n: int = 5) -> list[str]:
    """The ``n`` vocabulary entries closest to ``text`` (difflib), compared without word-start marks."""
    import difflib

    by_word: dict[str, str] = {}
    for token in tokenizer.get_vocab():
        by_word.setdefault(token.lstrip("".join(_WORD_PREFIXES)) or token, token)
    return [by_word[w] for w in difflib.get_close_matches(text.strip(), list(by_word), n=n, cutoff=0.5)]


def single_token_id(tokenizer: Any, text: str) -> int:
    """The id of ``text`` as ONE token (no special tokens added); raises with the closest vocabulary entries when
    ``text`` is not in the vocabulary (it would silently become the unknown token) or is several tokens."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    unk = getattr(tokenizer, "unk_token_id", None)
    unknown = unk is not None and unk in ids and getattr(tokenizer, "unk_token", None) not in text
    if unknown or len(ids) != 1:
        close = closest_tokens(tokenizer, text)
        hint = f"; closest vocabulary entries: {', '.join(repr(c) for c in close)}" if close else ""
        what = (f"{text!r} is not in the vocabulary (the tokenizer would read it as the unknown token "
                f"{tokenizer.unk_token!r})" if unknown else f"{text!r} is {len(ids)} tokens, not one: {ids}")
        raise ValueError(what + hint)
    return ids[0]
