"""Rotary position embeddings (rotate-half convention, as HF Llama/Mistral/Qwen2 use; ``interleaved``: rotate
(even, odd) pairs of each head, as HF Cohere / Cohere2 do: its cos/sin repeat each frequency twice side by side,
``repeat_interleave`` instead of ``cat``, and its rotate_half maps (x0, x1, x2, x3 ...) to (-x1, x0, -x3, x2 ...)).

``TowerConfig.rotary_dim`` (partial rotary, Qwen3.5: ``int(head_dim * partial_rotary_factor)``): the tables cover
rotary_dim channels (frequencies from rotary_dim, as HF computes them) and :func:`apply_rotary` turns only those.

Scaled variants (``linear``, ``llama3``, ``yarn``) reuse transformers' own inverse-frequency
functions so the numbers cannot drift from HF's. Variants that change with sequence length at
run time are refused by the converters (``longrope``), or, for ``dynamic`` (NTK), implemented where
they are exact: HF's dynamic frequencies equal its initial table while positions stay below
``max_position_embeddings`` and are rescaled beyond it, so a forward reaching that far raises.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange
from torch import nn

STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "proportional")
BOUNDED_ROPE_TYPES = ("dynamic",)  # exact below max_position_embeddings; Rotary refuses positions beyond it


def rope_inv_freq(rope_parameters: dict[str, Any], d_head: int, max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [d_head // 2] and the cos/sin scaling factor."""
    rope_type = rope_parameters.get("rope_type", "default")
    theta = float(rope_parameters.get("rope_theta", 10000.0))
    if rope_type == "default":
        return 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.int64).float() / d_head)), 1.0
    if rope_type == "proportional":  # Gemma 4 global layers: HF's _compute_proportional_rope_parameters
        # the first int(partial_rotary_factor * d_head // 2) pairs turn at frequencies from d_head; the rest get
        # frequency 0 (cos 1, sin 0: passed through unchanged), so the table still spans all of d_head
        angles = int(float(rope_parameters.get("partial_rotary_factor", 1.0)) * d_head // 2)
        turned = 1.0 / (theta ** (torch.arange(0, 2 * angles, 2, dtype=torch.int64).float() / d_head))
        inv_freq = torch.cat([turned, torch.zeros(d_head // 2 - angles)])
        return inv_freq / float(rope_parameters.get("factor", 1.0)), 1.0
    if rope_type not in STATIC_ROPE_TYPES + BOUNDED_ROPE_TYPES:
        raise ValueError(f"rope_type {rope_type!r} is not supported; supported: "
                         f"{', '.join(STATIC_ROPE_TYPES + BOUNDED_ROPE_TYPES)}")
    from transformers import PretrainedConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_like = PretrainedConfig()
    for key, value in dict(rope_parameters=dict(rope_parameters), head_dim=d_head, hidden_size=d_head,
                           num_attention_heads=1, max_position_embeddings=max_position_embeddings).items():
        setattr(hf_like, key, value)
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_like, device=None)
    return inv_freq.float(), float(scaling)


class Rotary(nn.Module):
    """Computes cos/sin tables for given absolute positions."""

    def __init__(self, d_head: int, rope_parameters: dict[str, Any], max_position_embeddings: int,
                 interleaved: bool = False):
        super().__init__()
        self._args = (rope_parameters, d_head, max_position_embeddings)
        self.interleaved = interleaved  # tables for apply_rotary(..., interleaved=True)
        self.register_buffer("inv_freq", torch.empty(d_head // 2), persistent=False)
        self.scaling = 1.0
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)compute the frequency table; called again after a model built on 'meta' is materialised."""
        rope_parameters, d_head, max_pos = self._args
        with torch.device("cpu"):
            inv_freq, self.scaling = rope_inv_freq(rope_parameters, d_head, max_pos)
        if self.inv_freq.device.type != "meta":
            self.inv_freq = inv_freq.to(self.inv_freq.device)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [batch, pos] -> cos, sin [batch, pos, 1, d_head] (broadcast over heads).

        position_ids [3, batch, pos] (temporal, height, width) is multimodal RoPE (Qwen2-VL's M-RoPE):
        ``rope_parameters["mrope_section"]`` says how many frequency pairs follow each axis.
        """
        rope_parameters, _, max_pos = self._args
        if rope_parameters.get("rope_type") in BOUNDED_ROPE_TYPES and position_ids.numel() \
                and int(position_ids.max()) + 1 > max_pos:
            raise ValueError(
                f"position {int(position_ids.max())} is beyond max_position_embeddings={max_pos} of this model's "
                f"{rope_parameters['rope_type']!r} RoPE: HF rescales the rotary frequencies with the sequence length "
                "there (dynamic NTK), which is not implemented; keep prompt + generation under that length")
        freqs = position_ids[..., None].float() * self.inv_freq.float().to(position_ids.device)
        rope = self._args[0]
        if position_ids.ndim == 3 and rope.get("mrope_layout") == "doubled":  # any number of axes (HunYuan xdrope)
            emb = mrope_doubled(torch.cat((freqs, freqs), dim=-1), rope.get("mrope_section"))
        else:
            if position_ids.ndim == 3:
                select = mrope_interleave if rope.get("mrope_interleaved") else mrope_select
                freqs = select(freqs, rope.get("mrope_section"))
            emb = freqs.repeat_interleave(2, dim=-1) if self.interleaved else torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.scaling).to(dtype)
        sin = (emb.sin() * self.scaling).to(dtype)
        return cos[:, :, None, :], sin[:, :, None, :]


def axis_inv_freq(d_head: int, theta: float) -> torch.Tensor:
    """Frequencies of one axis of a 2-D vision rotary (Gemma 4's and Llama 4's towers): ``d_head // 4`` of them,
    ``theta ** (-2i / (d_head / 2))``, computed on the CPU in float32 (also for a model built on 'meta')."""
    half = d_head // 2
    with torch.device("cpu"):
        return 1.0 / (theta ** (torch.arange(0, half, 2, dtype=torch.float) / half))


def mrope_select(freqs: torch.Tensor, section: Any) -> torch.Tensor:
    """freqs [3, batch, pos, d_head // 2] -> [batch, pos, d_head // 2]: chunk i of the pairs follows axis i % 3."""
    if not section:
        raise ValueError("3-D position ids [3, batch, pos] need rope_parameters['mrope_section']")
    if sum(section) != freqs.shape[-1] or freqs.shape[0] != 3:
        raise ValueError(f"mrope_section {list(section)} must sum to d_head // 2 = {freqs.shape[-1]} "
                         f"and positions must be [3, batch, pos]; got {tuple(freqs.shape[:-1])}")
    return torch.cat([chunk[i % 3] for i, chunk in enumerate(freqs.split(list(section), dim=-1))], dim=-1)


def mrope_doubled(emb: torch.Tensor, section: Any) -> torch.Tensor:
    """``rope_parameters["mrope_layout"] == "doubled"`` (HunYuan's xdrope, ``recomposition_frequencies``): emb [axes,
    batch, pos, d_head] (the frequencies concatenated twice, the rotate-half table of every axis) -> [batch, pos,
    d_head]: consecutive runs of 2 * section[i] channels of the whole table follow axis i % axes. With 4 axes and equal
    sections the two halves of a rotated pair follow different axes (e.g. sequence position and image row)."""
    if not section or emb.shape[0] != len(section):
        raise ValueError(f"mrope_layout 'doubled' needs positions [len(mrope_section), batch, pos]; got section "
                         f"{section!r} and positions {tuple(emb.shape[:-1])}")
    if 2 * sum(section) != emb.shape[-1]:
        raise ValueError(f"mrope_section {list(section)} must sum to d_head // 2 = {emb.shape[-1] // 2}")
    n = len(section)
    return torch.cat([chunk[i % n] for i, chunk in enumerate(emb.split([2 * s for s in section], dim=-1))], dim=-1)


def mrope_interleave(freqs: torch.Tensor, section: Any) -> torch.Tensor:
    """Interleaved M-RoPE (Qwen3-VL, ``rope_parameters["mrope_interleaved"]``): freqs [3, batch, pos, d_head // 2]
    -> [batch, pos, d_head // 2]. Pair j follows height when ``j % 3 == 1 and j < 3 * section[1]``, width when
    ``j % 3 == 2 and j < 3 * section[2]``, time otherwise (HF's ``recomposition_frequencies``)."""
    if not section or len(section) != 3 or freqs.shape[0] != 3:
        raise ValueError(f"interleaved M-RoPE needs a 3-entry rope_parameters['mrope_section'] and positions "
                         f"[3, batch, pos]; got section {section!r} and positions {tuple(freqs.shape[:-1])}")
    if sum(section) != freqs.shape[-1]:
        raise ValueError(f"mrope_section {list(section)} must sum to d_head // 2 = {freqs.shape[-1]}")
    j = torch.arange(freqs.shape[-1], device=freqs.device)
    axis = torch.zeros_like(j)
    axis[(j % 3 == 1) & (j < 3 * section[1])] = 1
    axis[(j % 3 == 2) & (j < 3 * section[2])] = 2
    return freqs.gather(0, axis.view(1, 1, 1, -1).expand(1, *freqs.shape[1:]))[0]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): HF Cohere's rotate_half, on (even, odd) pairs."""
    pairs = rearrange(x, "... (d two) -> ... d two", two=2)
    return rearrange(torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1), "... d two -> ... (d two)")


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False,
                 axes: int = 1) -> torch.Tensor:
    """x [batch, pos, head, d_head]; cos / sin [..., rotary_dim]; ``interleaved`` with the tables of
    ``Rotary(..., interleaved=True)``. Partial rotary (rotary_dim < d_head, Qwen3.5's ``partial_rotary_factor``):
    the first rotary_dim channels are turned (rotate-half within them), the rest pass. ``axes`` > 1
    (``TowerConfig.rope_axes``, Gemma 4's vision tower): x and the tables split into that many equal parts, each
    rotated on its own (HF's apply_multidimensional_rope). With ``interleaved`` (even, odd) pairs never cross the
    parts' borders (each part even-wide), so the whole head is turned at once with the parts' tables side by side."""
    whole = interleaved and (x.shape[-1] // axes) % 2 == 0 and cos.shape[-1] == x.shape[-1]
    if axes > 1 and not whole:
        parts = zip(x.chunk(axes, -1), cos.chunk(axes, -1), sin.chunk(axes, -1))
        return torch.cat([apply_rotary(p, c, s, interleaved) for p, c, s in parts], dim=-1)
    rotate = rotate_interleaved if interleaved else rotate_half
    r = cos.shape[-1]
    if r == x.shape[-1]:
        return x * cos + rotate(x) * sin
    turned, kept = x[..., :r], x[..., r:]
    return torch.cat([turned * cos + rotate(turned) * sin, kept], dim=-1)
