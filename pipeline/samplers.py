"""Samplers: Python generators that yield (block index, clean latent block) as soon as a block is final.

* `rolling`        Rolling Forcing: a window of K blocks at a progressive noise staircase, one joint
                   forward per pass, one block finished per pass (ARCHITECTURE.md §2 pseudocode).
* `block_ar`       Self-Forcing-style block autoregression: each block denoised with all K steps.
* `bidirectional`  the teacher: a fixed-length clip, Euler flow-matching steps with CFG.

The streaming samplers drive a backend (`streaming.CachedBackend` or the cache-free
`reference.RecomputeBackend`) and own the noise: fresh eps is drawn from `generator` in a fixed
order, so two backends given equal seeds see identical noise. Latent blocks: [B, fpb, C, H, W].
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import Tensor

from .guidance import FULL_INTERVAL, guided_flow
from .networks.wan_dit import TextCond, WanDiT
from .schedule import add_noise, euler_step, teacher_sigmas
from .windows import rolling_passes


class Backend(Protocol):
    def predict(self, blocks: tuple[int, ...], x: Tensor, t: Tensor) -> Tensor: ...

    def commit(self, block: int, x0: Tensor) -> None: ...


def _noise(shape: tuple[int, ...], generator: torch.Generator, device, dtype) -> Tensor:
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _step_timesteps(levels: Tensor, block_shape: tuple[int, ...], device) -> list[Tensor]:
    """Per step k, the per-frame timestep tensor [B, fpb] of one block, made on the device once."""
    return [torch.full(block_shape[:2], float(tau), device=device) for tau in levels.tolist()]


def rolling(backend: Backend, levels: Tensor, block_shape: tuple[int, ...], num_blocks: int | None,
            generator: torch.Generator, device=None, dtype=torch.float32,
            num_train_timesteps: int = 1000, first_block: int = 0) -> Iterator[tuple[int, Tensor]]:
    """Rolling-window joint denoising.

    levels:      tau[0] > ... > tau[K-1] (float64 [K]); the window holds K blocks.
    block_shape: (B, fpb, C, H, W); num_blocks None streams forever.
    first_block: index of the first generated block, to continue after blocks 0..first_block-1
                 already in the backend's cache: the stream's blocks are first_block + 0..N-1
                 (only the cache bookkeeping sees block indices; RoPE positions are relative).
    Per pass: inputs = [re-noised blocks at their levels | fresh noise for the entering block];
    the oldest block's x0 is final (yielded, committed); the others are re-noised with fresh eps
    to their next lower level.
    """
    k_steps = len(levels)
    fpb = block_shape[1]
    step_t = _step_timesteps(levels, block_shape, device)
    tau = levels.tolist()
    noisy: dict[int, Tensor] = {}
    for p in rolling_passes(num_blocks, k_steps):
        x = torch.cat([noisy.pop(b) if k else _noise(block_shape, generator, device, dtype)
                       for b, k in zip(p.blocks, p.steps)], dim=1)
        t = torch.cat([step_t[k] for k in p.steps], dim=1)
        x0 = backend.predict(tuple(first_block + b for b in p.blocks), x, t)
        final = None
        for i, (b, k) in enumerate(zip(p.blocks, p.steps)):
            x0_b = x0[:, i * fpb:(i + 1) * fpb]
            if k == k_steps - 1:
                final = x0_b
            else:
                noisy[b] = add_noise(x0_b, _noise(block_shape, generator, device, dtype), tau[k + 1],
                                     num_train_timesteps)
        if final is not None:
            backend.commit(first_block + p.first, final)
            yield first_block + p.first, final


def block_ar(backend: Backend, levels: Tensor, block_shape: tuple[int, ...], num_blocks: int | None,
             generator: torch.Generator, device=None, dtype=torch.float32,
             num_train_timesteps: int = 1000, first_block: int = 0) -> Iterator[tuple[int, Tensor]]:
    """Block autoregression: block b goes noise -> tau[0] -> ... -> tau[K-1] -> x0, then is committed.

    Blocks are first_block .. first_block + N - 1 (first_block > 0 continues after a cached history).
    """
    step_t = _step_timesteps(levels, block_shape, device)
    tau = levels.tolist()
    blocks = itertools.count(first_block) if num_blocks is None else range(first_block, first_block + num_blocks)
    for b in blocks:
        x = _noise(block_shape, generator, device, dtype)
        for k in range(len(tau)):
            x0 = backend.predict((b,), x, step_t[k])
            if k + 1 < len(tau):
                x = add_noise(x0, _noise(block_shape, generator, device, dtype), tau[k + 1], num_train_timesteps)
        backend.commit(b, x0)
        yield b, x0


def bidirectional(model: WanDiT, text: TextCond, uncond: TextCond | None, shape: tuple[int, ...],
                  num_steps: int, shift: float, guidance_scale: float, generator: torch.Generator,
                  frames_per_block: int, device=None, dtype=torch.float32,
                  num_train_timesteps: int = 1000,
                  on_step: Callable[[int], None] | None = None,
                  guidance_interval=FULL_INTERVAL) -> Iterator[tuple[int, Tensor]]:
    """Teacher sampling of a whole clip [B, F, C, H, W] with Euler steps on the shifted schedule.

    flow = uncond + g * (cond - uncond) when g != 1 (standard CFG; g = 1 at noise levels outside
    `guidance_interval`, `pipeline.guidance`), then yields its blocks.
    """
    sigmas = teacher_sigmas(num_steps, shift)
    x = _noise(shape, generator, device, dtype)
    g = guidance_scale if uncond is not None else 1.0  # no negative text: unguided, as before
    for i in range(num_steps):
        t = torch.full((shape[0],), float(sigmas[i]) * num_train_timesteps, device=device)
        flow = guided_flow(model, x, t, text, uncond, g, guidance_interval, num_train_timesteps)
        x = euler_step(x, flow, sigmas[i], sigmas[i + 1])
        if on_step is not None:
            on_step(i)
    for b in range(shape[1] // frames_per_block):
        yield b, x[:, b * frames_per_block:(b + 1) * frames_per_block]


STREAMING_SAMPLERS = {"rolling": rolling, "block_ar": block_ar}
