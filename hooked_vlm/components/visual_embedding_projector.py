"""A visual tokenizer head + visual embedding table (Ovis 2): each image token is a probability distribution over
"visual words", and its embedding is that distribution times a learned table.

The tower's output (``projector.hook_in`` [image, patch, d_vision], row-major over the square patch grid) is folded
``hidden_stride x hidden_stride`` -> one token (features concatenated in (row offset, col offset) order, HF
``Ovis2VisionModel``'s reshape / permute), then ``head_linear`` (no bias) gives one logit per visual word and
``head_norm`` (a LayerNorm over the words) normalises them: ``hook_visual_logits``. A softmax over the words gives
``hook_visual_probs``, padded with zeros for the ``n_markers`` last rows of the table (HF pads the same way), and the
image embedding is ``probs @ table`` (``hook_out``). Those last rows are the embeddings of the visual indicator tokens
(image start / end, grid and crop separators): :meth:`marker_embeds` hands them to the model, which puts them at the
positions holding those token ids (``TokenRoles.projector_marker_ids``) when images are given, as HF does.

Settings (``ProjectorConfig.extra``): ``hidden_stride`` (patches folded per side), ``visual_vocab`` (rows of the table),
``n_markers`` (of them, the indicator rows at the end), ``tokenize`` ("softmax"; "hard": the one-hot of the arg-max,
what HF's straight-through ``st_argmax`` computes in a forward), ``norm_eps``. ``d_in`` is the tower's width,
``d_out`` the LM's.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..config import ProjectorConfig
from ..hook_points import HookPoint

TOKENIZE = ("softmax", "hard")


class VisualEmbeddingProjector(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        x = cfg.extra
        self.stride, self.n_markers, self.tokenize = int(x["hidden_stride"]), int(x["n_markers"]), x["tokenize"]
        if self.tokenize not in TOKENIZE:
            raise ValueError(f"visual_embedding_table projector: tokenize={self.tokenize!r}; known: {', '.join(TOKENIZE)}")
        visual_vocab = int(x["visual_vocab"])
        n_words = visual_vocab - self.n_markers
        if n_words < 1:
            raise ValueError(f"visual_embedding_table projector: a table of {visual_vocab} rows leaves no visual words "
                             f"beside {self.n_markers} marker rows")
        self.head_linear = nn.Linear(cfg.d_in * self.stride**2, n_words, bias=False)
        self.head_norm = nn.LayerNorm(n_words, eps=float(x.get("norm_eps", 1e-5)))
        self.table = nn.Parameter(torch.zeros(visual_vocab, cfg.d_out))  # [visual_vocab, d_model]
        self.hook_in = HookPoint()  # [image, patch, d_vision]
        self.hook_merged = HookPoint()  # [image, token, stride * stride * d_vision]
        self.hook_visual_logits = HookPoint()  # [image, token, visual_vocab - n_markers] (after head_norm)
        self.hook_visual_probs = HookPoint()  # [image, token, visual_vocab] (the marker columns are 0)
        self.hook_out = HookPoint()  # [image, token, d_model]
        self.hook_marker_embeds = HookPoint()  # [n_markers, d_model] (the table's last rows)

    def merge(self, features: torch.Tensor) -> torch.Tensor:
        """[image, side * side, d] -> [image, (side / stride)**2, stride * stride * d], row-major tokens."""
        n_patches = features.shape[1]
        side = int(round(n_patches**0.5))
        if side * side != n_patches or side % self.stride:
            raise ValueError(f"the visual tokenizer folds {self.stride} x {self.stride} patches of a square grid; got "
                             f"{n_patches} patches per image (the tower's image_size / patch_size must be a multiple "
                             f"of hidden_stride {self.stride})")
        return rearrange(features, "n (r dr c dc) d -> n (r c) (dr dc d)", dr=self.stride, dc=self.stride,
                         r=side // self.stride)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [image, patch, d_vision] -> image embeddings [image, token, d_model]."""
        x = self.hook_merged(self.merge(self.hook_in(features)))
        logits = self.hook_visual_logits(self.head_norm(self.head_linear(x)))
        if self.tokenize == "softmax":
            words = logits.softmax(dim=-1)
        else:  # the forward value of HF's straight-through arg-max (y_hard - y_soft.detach() + y_soft)
            words = torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        probs = torch.cat([words, words.new_zeros(*words.shape[:-1], self.n_markers)], dim=-1)
        probs = self.hook_visual_probs(probs)
        return self.hook_out(probs @ self.table.to(probs.dtype))

    def marker_embeds(self) -> torch.Tensor:
        """[n_markers, d_model]: the embeddings of the visual indicator tokens (the table's last rows)."""
        return self.hook_marker_embeds(self.table[self.table.shape[0] - self.n_markers:])
