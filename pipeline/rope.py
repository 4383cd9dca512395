"""3-D rotary position embedding (Wan2.1 layout), computed from positions at call time.

The head dim d holds d/2 rotation pairs, split into (t, h, w) parts of sizes
(c - 2*(c//3), c//3, c//3) with c = d/2; each part has its own inverse frequencies
theta^(-2i / d_axis). Pairs are *interleaved* (x[..., 2i], x[..., 2i+1]) as in Wan's complex view.
There is no position table: any frame position works, so stream length is unbounded.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


@functools.lru_cache(maxsize=16)
def _inv_freqs(head_dim: int, theta: float) -> tuple[Tensor, Tensor, Tensor]:
    out = []
    for pairs in axis_pairs(head_dim):
        dim = 2 * pairs
        out.append(1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    return tuple(out)


def rope_angles(frame_pos: Tensor, height: int, width: int, head_dim: int, theta: float = 10000.0) -> Tensor:
    """Rotation angles for a (frames x height x width) token grid, frame-major.

    frame_pos: [F] frame positions (any integers/floats; relative positions are what matter)
    returns:   [F*height*width, head_dim/2] float64
    """
    inv_t, inv_h, inv_w = (f.to(frame_pos.device) for f in _inv_freqs(head_dim, float(theta)))
    f = frame_pos.to(torch.float64)
    n_f = f.numel()
    a_t = torch.outer(f, inv_t)[:, None, None, :].expand(n_f, height, width, -1)
    a_h = torch.outer(torch.arange(height, dtype=torch.float64, device=f.device), inv_h)[None, :, None, :]
    a_w = torch.outer(torch.arange(width, dtype=torch.float64, device=f.device), inv_w)[None, None, :, :]
    a = torch.cat([a_t, a_h.expand(n_f, height, width, -1), a_w.expand(n_f, height, width, -1)], dim=-1)
    return a.reshape(n_f * height * width, -1)


def rope_cos_sin(frame_pos: Tensor, height: int, width: int, head_dim: int, theta: float = 10000.0,
                 dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """cos/sin tables [L, head_dim/2] (computed in float64, cast to `dtype`)."""
    a = rope_angles(frame_pos, height, width, head_dim, theta)
    return torch.cos(a).to(dtype), torch.sin(a).to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of x [B, L, n, d] by angles with cos/sin [L, d/2]; float32 math."""
    xf = x.float().unflatten(-1, (-1, 2))
    a, b = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)
    return out.to(x.dtype)
