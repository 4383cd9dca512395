"""One attention entry point: flash-attn (3 or 2) when usable, torch SDPA otherwise.

    attention(q, k, v, mask=None) -> out      q: [B, Lq, n, d], k/v: [B, Lk, n, d], out: [B, Lq, n, d]

mask (bool, True = may attend) is [Lq, Lk] or [B, 1|n, Lq, Lk]. flash-attn is used only on CUDA,
for fp16/bf16 inputs and without a mask; everything else (CPU, fp32, masks, backward on CPU) takes
SDPA, whose math the parity test checks against a float64 naive implementation.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "sdpa", "flash")


@functools.lru_cache(maxsize=1)
def _flash_fn():
    """The best importable flash-attention function (FA3 first), or None."""
    try:
        from flash_attn_interface import flash_attn_func as fa3  # FlashAttention-3 (Hopper)

        def call(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            out = fa3(q, k, v)
            return out[0] if isinstance(out, tuple) else out  # some FA3 releases also return the LSE

        return call
    except ImportError:
        pass
    try:
        from flash_attn import flash_attn_func  # FlashAttention-2

        return flash_attn_func
    except ImportError:
        return None


def flash_available() -> bool:
    return torch.cuda.is_available() and _flash_fn() is not None


_configured = "auto"  # runtime.attention of the process's generator / trainer (`configure`)


def configure(backend: str) -> None:
    """Make `backend` (runtime.attention) the default of every later `attention` call in this process."""
    global _configured
    if backend not in BACKENDS:
        raise ValueError(f"runtime.attention: unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    _configured = backend


def resolve_backend(backend: str | None = None) -> str:
    """Which kernel `attention` will use for unmasked half-precision CUDA inputs: $ROLLFORGE_ATTENTION,
    else `backend`, else the configured runtime.attention."""
    backend = os.environ.get("ROLLFORGE_ATTENTION", backend or _configured)
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "flash" and not flash_available():
        raise RuntimeError("attention backend 'flash' requested but flash-attn is not importable on CUDA "
                           "(install the gpu extra: pip install 'rollforge[gpu]')")
    if backend == "auto":
        return "flash" if flash_available() else "sdpa"
    return backend


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, backend: str | None = None) -> Tensor:
    """Softmax(q k^T / sqrt(d)) v over [B, L, n, d] tensors; see module docstring."""
    if (mask is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and resolve_backend(backend) == "flash"):
        return _flash_fn()(q, k, v)
    if mask is not None and mask.dim() == 2:
        mask = mask[None, None]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def naive_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Reference implementation in float64 (tests only)."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~(mask if mask.dim() == 4 else mask[None, None]), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)
