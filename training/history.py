"""Self-generated histories: what a rollout worker hands the learner, and how the learner uses one.

A *history* is the clean latent stream of `num_blocks` blocks that a (slightly stale) copy of the
student generated under no_grad for one prompt. The learner does not need all of it: its KV cache
only ever holds the sink and the most recent blocks (`ContextRule.cache_recent` of them), so a
history carries just those blocks' clean latents plus the prompt embedding. The learner recomputes
their K/V with its *current* weights (`prime_cache`: one clean pass per block, in order, each
seeing what the context rule gives it of the kept blocks -- the sink and the earlier kept blocks)
and then continues the stream from block `num_blocks` with gradient (training/rollouts.py).
Exactly recomputing the first kept block's K/V would need the blocks before it, and theirs in
turn, so priming is the one place where a forward sees less than the rule's full view.

Staleness: a history made with weights version v, used at learner version c, has staleness c - v;
it is dropped when c - v > max_staleness (`is_stale`). `HistoryFeed` does the dropping and counting
over any `HistorySource`; the Ray implementation lives in infra/rollout_workers.py and is installed
with `set_history_source` (training never imports Ray).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from pipeline.networks.wan_dit import WanDiT
from pipeline.samplers import STREAMING_SAMPLERS
from pipeline.streaming import CachedBackend
from pipeline.windows import ContextRule, visible_blocks


@dataclass
class History:
    """One self-generated history.

    text:       [1, L, D] the prompt's text-encoder states (the learner encodes them with its weights)
    latents:    [1, n*fpb, C, H, W] clean latents of `blocks` (n kept blocks, increasing), CPU
    blocks:     block indices of `latents`: sink blocks + the last recent blocks (`which_blocks`)
    num_blocks: the history's length in blocks; the learner continues at block `num_blocks`
    """

    version: int
    text: Tensor
    latents: Tensor
    blocks: tuple[int, ...]
    num_blocks: int
    worker: int = 0
    rollout_s: float = 0.0  # worker wall seconds spent generating it
    tokens: int = 0  # latent tokens the worker pushed through the student (num_blocks blocks)

    def block(self, i: int) -> Tensor:
        """Latent [B, fpb, C, H, W] of the i-th kept block (`blocks[i]`)."""
        fpb = self.latents.shape[1] // len(self.blocks)
        return self.latents[:, i * fpb:(i + 1) * fpb]

    def tail(self) -> Tensor:
        """Latents [B, n*fpb, C, H, W] of the kept blocks that run without a gap up to the history's
        last block (what precedes the continuation: decoded for first-frame handling)."""
        run = []
        for i in range(len(self.blocks) - 1, -1, -1):
            if self.blocks[i] != self.num_blocks - 1 - len(run):
                break
            run.append(i)
        if not run:
            raise ValueError(f"history of {self.num_blocks} blocks keeps no block right before its end: {self.blocks}")
        return torch.cat([self.block(i) for i in reversed(run)], dim=1)

    def cut(self, num_blocks: int, rule: ContextRule) -> History:
        """The first `num_blocks` blocks of this history, keeping what a learner continuing at block
        `num_blocks` needs (`which_blocks`); those blocks must have been kept (`keep_blocks`)."""
        if num_blocks == self.num_blocks:
            return self
        need = which_blocks(num_blocks, rule)
        missing = [b for b in need if b not in self.blocks]
        if num_blocks > self.num_blocks or missing:
            raise ValueError(f"a {self.num_blocks}-block history keeping {self.blocks} cannot be cut to "
                             f"{num_blocks} blocks (needs {need})")
        parts = [self.block(self.blocks.index(b)) for b in need]
        latents = torch.cat(parts, 1) if parts else self.latents[:, :0]
        return dataclasses.replace(self, latents=latents, blocks=need, num_blocks=num_blocks)

    @staticmethod
    def stack(histories: list[History]) -> History:
        """One batched history [B = len(histories)] of equal-length histories (a prompt per sample)."""
        first = histories[0]
        if any((h.num_blocks, h.blocks) != (first.num_blocks, first.blocks) for h in histories):
            raise ValueError("histories of different lengths cannot share a batch; cut them to one length first")
        if len(histories) == 1:
            return first
        return dataclasses.replace(first, version=min(h.version for h in histories),
                                   text=torch.cat([h.text for h in histories]),
                                   latents=torch.cat([h.latents for h in histories]),
                                   rollout_s=sum(h.rollout_s for h in histories),
                                   tokens=sum(h.tokens for h in histories))


def is_stale(history_version: int, current_version: int, max_staleness: int) -> bool:
    """True iff current - history > max_staleness (a history from a newer version is never stale)."""
    return current_version - history_version > max_staleness


def which_blocks(history_blocks: int, rule: ContextRule) -> tuple[int, ...]:
    """Blocks a learner's cache holds when it continues at block `history_blocks`: sink + the last
    `rule.cache_recent` blocks."""
    return visible_blocks(history_blocks, rule.sink_blocks, rule.cache_recent)


def keep_blocks(min_blocks: int, max_blocks: int, rule: ContextRule) -> tuple[int, ...]:
    """Blocks a `max_blocks` history keeps so that it can be cut to any length in [min, max]."""
    return tuple(sorted(set().union(*(which_blocks(h, rule) for h in range(min_blocks, max_blocks + 1)))))


@torch.no_grad()
def prime_cache(backend: CachedBackend, history: History) -> None:
    """Commit the history's blocks in increasing order through `backend.commit` (clean passes at t=0
    with the backend's current weights and text): block i sees what the context rule gives its clean
    pass of the kept blocks before it (`partial`: the rest of the history is not kept)."""
    device = next(backend.model.parameters()).device
    for i, b in enumerate(history.blocks):
        backend.commit(b, history.block(i).to(device), partial=True)


@torch.no_grad()
def generate_history(model: WanDiT, text: Tensor, levels: Tensor, block_shape: tuple[int, ...],
                     history_blocks: int, rule: ContextRule, generator: torch.Generator,
                     sampler: str = "rolling", version: int = 0, worker: int = 0,
                     num_train_timesteps: int = 1000, min_blocks: int | None = None) -> History:
    """Stream `history_blocks` blocks (0 allowed: an empty history, the learner starts at block 0)
    for prompt states `text` [1, L, D] with `sampler` over the usual sink + rolling cache
    (inference exactly) and keep only the blocks a learner's cache needs to continue after any
    length in [min_blocks (default: history_blocks), history_blocks] (`History.cut`)."""
    start = time.perf_counter()
    param = next(model.parameters())
    cond = model.encode_text(text.to(param.device, param.dtype))
    backend = CachedBackend.build(model, cond, rule, num_train_timesteps)
    keep = set(keep_blocks(history_blocks if min_blocks is None else min_blocks, history_blocks, rule))
    kept: dict[int, Tensor] = {}
    if history_blocks > 0:
        for b, x0 in STREAMING_SAMPLERS[sampler](backend, levels, block_shape, history_blocks, generator,
                                                 param.device, num_train_timesteps=num_train_timesteps):
            if b in keep:
                kept[b] = x0.float().cpu()
    blocks = tuple(sorted(kept))
    pt, ph, pw = model.cfg.patch_size
    fpb, h, w = block_shape[1], block_shape[3], block_shape[4]
    latents = (torch.cat([kept[b] for b in blocks], 1) if blocks
               else torch.zeros(1, 0, *block_shape[2:]))
    return History(version=version, text=text.detach().float().cpu(), latents=latents,
                   blocks=blocks, num_blocks=history_blocks, worker=worker, rollout_s=time.perf_counter() - start,
                   tokens=history_blocks * (fpb // pt) * (h // ph) * (w // pw))


# ---------------------------------------------------------------------------------- sources


class HistorySource(Protocol):
    """Where a learner gets histories and sends its weights (infra.rollout_workers.RayHistorySource)."""

    def get(self, current_version: int) -> History:
        """The next history (blocking; raises TimeoutError after the source's timeout)."""
        ...

    def publish(self, version: int, state_dict: dict[str, Tensor]) -> None:
        """New student weights (full fp32 CPU tensors, `WanDiT.state_dict()` keys) for the workers."""
        ...

    def stats(self) -> dict[str, float]:
        """Pool-wide numbers for the logs: rollout/queue_depth, rollout/histories_per_s, rollout/replaced."""
        ...


_SOURCE: HistorySource | None = None


def set_history_source(source: HistorySource | None) -> None:
    """Install (or clear) the process's history source; the infra layer calls this in each learner."""
    global _SOURCE
    _SOURCE = source


def history_source() -> HistorySource:
    if _SOURCE is None:
        raise RuntimeError("rollouts.workers > 0 but no history source is installed in this process: rollout "
                           "workers run under Ray (rollforge train --ray), which installs one in every learner")
    return _SOURCE


class HistoryFeed:
    """Fresh histories from a source: stale ones (`is_stale`) are dropped and counted."""

    def __init__(self, source: HistorySource, max_staleness: int):
        self.source, self.max_staleness = source, max_staleness
        self.dropped_stale = 0  # cumulative (kept in the objective's checkpointed state)

    def next(self, current_version: int) -> tuple[History, dict[str, float]]:
        """(history, logs): rollout/{staleness, dropped_stale, wait_s, worker_s} + the source's stats."""
        start = time.perf_counter()
        while True:
            history = self.source.get(current_version)
            if not is_stale(history.version, current_version, self.max_staleness):
                break
            self.dropped_stale += 1
        logs = {"rollout/staleness": current_version - history.version, "rollout/dropped_stale": self.dropped_stale,
                "rollout/wait_s": time.perf_counter() - start, "rollout/worker_s": history.rollout_s}
        return history, {**logs, **self.source.stats()}
