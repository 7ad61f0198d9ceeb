"""The gated delta rule (Gated DeltaNet's recurrence), two algorithms with the same numbers as HF's torch path.

Per value head, with q, k l2-normalised and q scaled by d_k ** -0.5, state S [d_k, d_v] starting at S0:

    S_t = exp(g_t) * S_{t-1}                         decay (g_t <= 0)
    S_t = S_t + k_t (beta_t * (v_t - S_t^T k_t))^T   delta-rule write: move the value read at k_t towards v_t
    o_t = S_t^T q_t

:func:`recurrent_gated_delta_rule` runs it step by step (HF's ``torch_recurrent_gated_delta_rule``, used for one new
token with a state); :func:`chunk_gated_delta_rule` computes the same in blocks of ``chunk_size`` positions with a
triangular solve inside each block (HF's ``torch_chunk_gated_delta_rule``, used for prompts). Both compute in float32
and return (o [batch, pos, head, d_v] in the input dtype, final state [batch, head, d_k, d_v] float32).
Grouped heads: each q / k head serves ``n_value_heads // n_key_heads`` consecutive value heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last axis (HF's / FLA's l2norm)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def _prepare(q, k, v, g, beta):
    """Repeat q / k over the value heads; float32 [batch, head, pos, ...]; l2-normalise q, k; scale q."""
    n_rep = v.shape[2] // k.shape[2]
    if n_rep > 1:
        q, k = q.repeat_interleave(n_rep, dim=2), k.repeat_interleave(n_rep, dim=2)
    q, k, v, beta, g = [x.transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format)
                        for x in (q, k, v, beta, g)]
    q, k = l2norm(q), l2norm(k)
    return q, k, v, g, beta


def recurrent_gated_delta_rule(
    q: torch.Tensor,  # [batch, pos, k_head, d_k]
    k: torch.Tensor,  # [batch, pos, k_head, d_k]
    v: torch.Tensor,  # [batch, pos, head, d_v]
    g: torch.Tensor,  # [batch, pos, head]  log decay
    beta: torch.Tensor,  # [batch, pos, head]
    initial_state: torch.Tensor | None = None,  # [batch, head, d_k, d_v]
) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = q.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta)
    q = q / (q.shape[-1] ** 0.5)
    b, h, n, dk = k.shape
    state = initial_state.to(v) if initial_state is not None else v.new_zeros(b, h, dk, v.shape[-1])
    out = torch.zeros_like(v)
    for t in range(n):
        state = state * g[:, :, t].exp()[..., None, None]
        read = (state * k[:, :, t, :, None]).sum(dim=-2)  # [batch, head, d_v]: S^T k
        delta = (v[:, :, t] - read) * beta[:, :, t, None]
        state = state + k[:, :, t, :, None] * delta[..., None, :]
        out[:, :, t] = (state * q[:, :, t, :, None]).sum(dim=-2)
    return out.transpose(1, 2).contiguous().to(dtype), state


def chunk_gated_delta_rule(
    q: torch.Tensor,  # [batch, pos, k_head, d_k]
    k: torch.Tensor,  # [batch, pos, k_head, d_k]
    v: torch.Tensor,  # [batch, pos, head, d_v]
    g: torch.Tensor,  # [batch, pos, head]
    beta: torch.Tensor,  # [batch, pos, head]
    initial_state: torch.Tensor | None = None,  # [batch, head, d_k, d_v]
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = q.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta)
    q = q * q.shape[-1] ** -0.5
    b, h, n, dk = k.shape
    dv = v.shape[-1]
    pad = (chunk_size - n % chunk_size) % chunk_size  # right-pad to whole chunks (padded steps come after: unread)
    q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    beta, g = (F.pad(x, (0, pad)) for x in (beta, g))
    v_beta, k_beta = v * beta[..., None], k * beta[..., None]
    q, k, k_beta, v_beta = (x.reshape(b, h, -1, chunk_size, x.shape[-1]) for x in (q, k, k_beta, v_beta))
    g = g.reshape(b, h, -1, chunk_size).cumsum(dim=-1)  # log decay from the chunk start to each position
    above = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).triu(1)
    decay = (g[..., :, None] - g[..., None, :]).masked_fill(above, float("-inf")).exp()  # [.., i, j]: j -> i, j <= i
    system = (k_beta @ k.transpose(-1, -2)) * decay  # unit-lower-triangular system of the chunk's writes
    intra = (q @ k.transpose(-1, -2)) * decay
    new_values = torch.linalg.solve_triangular(system, v_beta, upper=False, unitriangular=True)
    k_cumdecay = torch.linalg.solve_triangular(system, k_beta * g.exp()[..., None], upper=False, unitriangular=True)
    state = initial_state.to(new_values) if initial_state is not None else new_values.new_zeros(b, h, dk, dv)
    out = torch.zeros_like(new_values)
    q = q * g.exp()[..., None]
    k = k * (g[..., -1:] - g).exp()[..., None]
    chunk_decay = g[..., -1].exp()[..., None, None]
    for i in range(q.shape[2]):
        v_new = new_values[:, :, i] - k_cumdecay[:, :, i] @ state  # what the chunk writes, less what S predicts
        out[:, :, i] = q[:, :, i] @ state + intra[:, :, i] @ v_new
        state = state * chunk_decay[:, :, i] + k[:, :, i].transpose(-1, -2) @ v_new
    out = out.reshape(b, h, -1, dv)[:, :, :n]
    return out.transpose(1, 2).to(dtype, memory_format=torch.contiguous_format), state
