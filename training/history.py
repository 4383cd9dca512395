"""Self-generated histories: what a rollout worker hands the learner, and how the learner uses one.

A *history* is the clean latent stream of `num_blocks` blocks that a (slightly stale) copy of the
student generated under no_grad for one prompt. The learner does not need all of it: its KV cache
only ever holds the sink and the most recent blocks (`pipeline.windows.visible_blocks`), so a
history carries just those blocks' clean latents plus the prompt embedding. The learner recomputes
their K/V with its *current* weights (`prime_cache`: one clean pass per block, in order, each seeing
the sink and the earlier kept blocks, i.e. block-causal as in `CachedBackend.switch_text`) and then
continues the stream from block `num_blocks` with gradient (training/rollouts.py).

Staleness: a history made with weights version v, used at learner version c, has staleness c - v;
it is dropped when c - v > max_staleness (`is_stale`). `HistoryFeed` does the dropping and counting
over any `HistorySource`; the Ray implementation lives in infra/rollout_workers.py and is installed
with `set_history_source` (training never imports Ray).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from pipeline.kv_cache import RollingKVCache
from pipeline.networks.wan_dit import WanDiT
from pipeline.samplers import STREAMING_SAMPLERS
from pipeline.streaming import CachedBackend
from pipeline.windows import recent_capacity, visible_blocks


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
        """Latent [1, fpb, C, H, W] of the i-th kept block (`blocks[i]`)."""
        fpb = self.latents.shape[1] // len(self.blocks)
        return self.latents[:, i * fpb:(i + 1) * fpb]


def is_stale(history_version: int, current_version: int, max_staleness: int) -> bool:
    """True iff current - history > max_staleness (a history from a newer version is never stale)."""
    return current_version - history_version > max_staleness


def which_blocks(history_blocks: int, sink_blocks: int, recent_blocks: int) -> tuple[int, ...]:
    """Blocks a stream continuing at block `history_blocks` attends to: sink + last `recent_blocks`."""
    return visible_blocks(history_blocks, sink_blocks, recent_blocks)


def learner_recent_blocks(context_blocks: int, sink_blocks: int, window_blocks: int) -> int:
    """Recent blocks a history must carry: the largest FIFO any learner rollout uses (block_ar's:
    one query block; rolling's window of K query blocks leaves it fewer), so one history serves both."""
    return max(recent_capacity(s, context_blocks, sink_blocks, window_blocks) for s in ("rolling", "block_ar"))


@torch.no_grad()
def prime_cache(backend: CachedBackend, history: History) -> None:
    """Commit the history's blocks in increasing order through `backend.commit` (clean passes at t=0
    with the backend's current weights and text): block i sees the sink + the kept blocks before it
    that the cache still holds, exactly what a stream that committed these latents would see."""
    device = next(backend.model.parameters()).device
    for i, b in enumerate(history.blocks):
        backend.commit(b, history.block(i).to(device))


@torch.no_grad()
def generate_history(model: WanDiT, text: Tensor, levels: Tensor, block_shape: tuple[int, ...],
                     history_blocks: int, sink_blocks: int, context_blocks: int, generator: torch.Generator,
                     sampler: str = "rolling", version: int = 0, worker: int = 0,
                     num_train_timesteps: int = 1000) -> History:
    """Stream `history_blocks` blocks for prompt states `text` [1, L, D] with `sampler` over the usual
    sink + rolling cache (inference exactly) and keep only the blocks a learner's cache needs."""
    start = time.perf_counter()
    param = next(model.parameters())
    cond = model.encode_text(text.to(param.device, param.dtype))
    k = len(levels)
    cache = RollingKVCache(sink_blocks, recent_capacity(sampler, context_blocks, sink_blocks, k))
    backend = CachedBackend(model, cond, cache, num_train_timesteps)
    keep = set(which_blocks(history_blocks, sink_blocks, learner_recent_blocks(context_blocks, sink_blocks, k)))
    kept: dict[int, Tensor] = {}
    for b, x0 in STREAMING_SAMPLERS[sampler](backend, levels, block_shape, history_blocks, generator, param.device,
                                             num_train_timesteps=num_train_timesteps):
        if b in keep:
            kept[b] = x0.float().cpu()
    blocks = tuple(sorted(kept))
    pt, ph, pw = model.cfg.patch_size
    fpb, h, w = block_shape[1], block_shape[3], block_shape[4]
    return History(version=version, text=text.detach().float().cpu(), latents=torch.cat([kept[b] for b in blocks], 1),
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
