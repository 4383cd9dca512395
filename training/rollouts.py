"""Self-generated training rollouts that reuse the inference samplers' exact loop.

`GradWindowBackend` wraps the KV-cached backend: the sampler (pipeline.samplers.rolling or
block_ar) calls `predict` once per forward, in order; forwards whose index is in `record_calls`
have their x0 prediction recorded per block (with autograd when `with_grad`), every other forward
runs under no_grad. The sampler always receives detached x0, so history, re-noising and the clean
cache pass stay gradient-free (exposure-bias fix: the student is conditioned on its own detached
outputs). Every forward follows the stream's context rule (`ContextRule`), as inference does.

The recorded blocks are the DMD sample: the generator scores it with gradient, and the critic is
trained on the same construction from a fresh rollout without gradient (`with_grad=False`), so the
fake score models exactly the distribution the generator loss scores.

Rolling Forcing (non-overlapping windows): pass w is recorded iff w ≡ e (mod K) and the window
reaches the scored region (the last `score_blocks` blocks); each scored block then carries its x0
from exactly one such window, at the level it had there (a mixture of levels, not the final stream).
Self-Forcing: block-AR with a random exit step s (same on all ranks): each block is denoised
through steps 0..s and its step-s x0 is its output; the scored blocks' step-s forwards are recorded.

With a `History` (made by a rollout worker, training/history.py) the cache is first primed from the
history's kept blocks with the current weights (no grad), and the rollout generates blocks
H .. H + num_blocks - 1 (H = history.num_blocks) under the same rules; pass and forward indices
are counted from the continuation's start, block indices are global.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.kv_cache import RollingKVCache
from pipeline.networks.wan_dit import TextCond, WanDiT
from pipeline.samplers import block_ar, rolling
from pipeline.streaming import CachedBackend
from pipeline.windows import ContextRule, gradient_passes, rolling_pass

from .history import History, prime_cache


class GradWindowBackend(CachedBackend):
    def __init__(self, model: WanDiT, text: TextCond, rule: ContextRule, record_calls: set[int],
                 with_grad: bool = True, num_train_timesteps: int = 1000):
        super().__init__(model, text, RollingKVCache.for_rule(rule), rule, num_train_timesteps)
        self.record_calls = record_calls
        self.with_grad = with_grad
        self.calls = 0
        self.recorded: dict[int, Tensor] = {}  # block -> x0 [B, fpb, C, H, W] (with gradient when with_grad)

    def predict(self, blocks: tuple[int, ...], x: Tensor, t: Tensor) -> Tensor:
        call, self.calls = self.calls, self.calls + 1
        with torch.set_grad_enabled(self.with_grad and call in self.record_calls):
            x0 = super().predict(blocks, x, t)
        if call in self.record_calls:
            fpb = x.shape[1] // len(blocks)
            for i, b in enumerate(blocks):
                self.recorded[b] = x0[:, i * fpb:(i + 1) * fpb]
        return x0.detach()

    def commit(self, block: int, x0: Tensor, partial: bool = False) -> None:
        with torch.no_grad():
            super().commit(block, x0.detach(), partial)


def rolling_grad_passes(num_blocks: int, num_steps: int, offset: int, score_blocks: int) -> set[int]:
    """Passes with gradient: ≡ offset (mod K) and overlapping the last `score_blocks` blocks."""
    first_scored = num_blocks - score_blocks
    return {w for w in gradient_passes(num_blocks, num_steps, offset)
            if rolling_pass(w, num_blocks, num_steps).blocks[-1] >= first_scored}


def _assemble(backend: GradWindowBackend, scored: range) -> Tensor | None:
    """[B, score_blocks*fpb, C, H, W]: recorded x0 of each scored block (None if none scored)."""
    if not scored:
        return None
    missing = [b for b in scored if b not in backend.recorded]
    if missing:
        raise RuntimeError(f"scored blocks {missing} got no recorded window")
    return torch.cat([backend.recorded[b] for b in scored], dim=1)


def _start(backend: GradWindowBackend, history: History | None) -> int:
    """First block of the rollout: 0, or history.num_blocks after priming the cache from it."""
    if history is None:
        return 0
    prime_cache(backend, history)
    return history.num_blocks


def rolling_rollout(model: WanDiT, text: TextCond, levels: Tensor, block_shape: tuple[int, ...], num_blocks: int,
                    score_blocks: int, offset: int, rule: ContextRule, generator: torch.Generator,
                    num_train_timesteps: int = 1000, history: History | None = None,
                    with_grad: bool = True) -> tuple[Tensor | None, Tensor]:
    """Rolling Forcing rollout: (the scored sample -- the recorded windows' x0, with gradient when
    `with_grad` -- or None when score_blocks=0, the generated blocks' finals detached
    [B, num_blocks*fpb, ...]); after `history` when given."""
    k = len(levels)
    record = rolling_grad_passes(num_blocks, k, offset, score_blocks)  # one predict per pass
    backend = GradWindowBackend(model, text, rule, record, with_grad, num_train_timesteps)
    first = _start(backend, history)
    device = next(model.parameters()).device
    finals = [x0 for _, x0 in rolling(backend, levels, block_shape, num_blocks, generator, device,
                                      num_train_timesteps=num_train_timesteps, first_block=first)]
    scored = range(first + num_blocks - score_blocks, first + num_blocks)
    return _assemble(backend, scored), torch.cat(finals, dim=1)


def self_forcing_rollout(model: WanDiT, text: TextCond, levels: Tensor, block_shape: tuple[int, ...],
                         num_blocks: int, score_blocks: int, exit_step: int, rule: ContextRule,
                         generator: torch.Generator, num_train_timesteps: int = 1000,
                         history: History | None = None, with_grad: bool = True) -> tuple[Tensor | None, Tensor]:
    """Self-Forcing rollout with exit step `exit_step` (0-based) for every block; after `history` when given."""
    steps = exit_step + 1
    first_scored = num_blocks - score_blocks
    record = {b * steps + exit_step for b in range(first_scored, num_blocks)}  # steps forwards per block
    backend = GradWindowBackend(model, text, rule, record, with_grad, num_train_timesteps)
    first = _start(backend, history)
    device = next(model.parameters()).device
    finals = [x0 for _, x0 in block_ar(backend, levels[:steps], block_shape, num_blocks, generator, device,
                                       num_train_timesteps=num_train_timesteps, first_block=first)]
    return _assemble(backend, range(first + first_scored, first + num_blocks)), torch.cat(finals, dim=1)
