"""Attention sink + FIFO rolling KV cache with pre-RoPE keys and a fixed size.

Holds, per committed (clean) block, its self-attention keys/values for every layer *before* RoPE
and its clean latent (for recomputing K/V under a new prompt): the first `sink_blocks` blocks,
forever, plus the `recent_blocks` most recent later ones -- the most any forward needs under the
context rule (`windows.context_for`; `windows.cache_recent_blocks` sizes the FIFO). Each forward
asks for its own view (`context(blocks)`): a window pass sees fewer recent blocks than a clean
pass. RoPE is applied at attention time with positions [view | queries] counted from 0, so memory
and positions stay bounded however long the stream runs.

Entry tensors: k, v [layers, B, T, n, d] (T = tokens per block); latent [B, frames_per_block, C, H, W].
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from torch import Tensor

from .networks.wan_dit import KVContext


@dataclass
class CacheEntry:
    block: int
    k: Tensor
    v: Tensor
    latent: Tensor

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.latent))


class RollingKVCache:
    def __init__(self, sink_blocks: int, recent_blocks: int):
        if sink_blocks < 0 or recent_blocks < 0:
            raise ValueError(f"sink_blocks ({sink_blocks}) and recent_blocks ({recent_blocks}) must be >= 0")
        self.sink_blocks = sink_blocks
        self.recent_blocks = recent_blocks
        self.sink: list[CacheEntry] = []
        self.recent: deque[CacheEntry] = deque(maxlen=recent_blocks)
        self._views: dict[tuple[int, ...], KVContext | None] = {}

    @staticmethod
    def for_rule(rule) -> RollingKVCache:
        """An empty cache sized for a `windows.ContextRule`: its sink + `rule.cache_recent` blocks."""
        return RollingKVCache(rule.sink_blocks, rule.cache_recent)

    # ------------------------------------------------------------------ contents
    @property
    def entries(self) -> list[CacheEntry]:
        """Sink first, then recent blocks oldest first (the RoPE layout order)."""
        return [*self.sink, *self.recent]

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(e.block for e in self.entries)

    def commit(self, entry: CacheEntry) -> None:
        """Add a clean block; a sink block is kept forever, others enter the FIFO (evicting the oldest).

        Re-committing a block already held replaces it (prompt recache).
        """
        if entry.block < self.sink_blocks:
            self.sink = [e for e in self.sink if e.block != entry.block] + [entry]
            self.sink.sort(key=lambda e: e.block)
        else:
            held = [i for i, e in enumerate(self.recent) if e.block == entry.block]
            if held:
                self.recent[held[0]] = entry
            else:
                if self.recent and entry.block <= self.recent[-1].block:
                    raise ValueError(f"block {entry.block} committed after block {self.recent[-1].block}")
                self.recent.append(entry)
        self._views.clear()

    def held(self, blocks: tuple[int, ...]) -> tuple[int, ...]:
        """The subset of `blocks` this cache holds (in the given order)."""
        have = set(self.blocks)
        return tuple(b for b in blocks if b in have)

    def context(self, blocks: tuple[int, ...] | None = None) -> KVContext | None:
        """The K/V view of `blocks` (all entries when None) in layout order, one chunk per block;
        None when empty. Asking for a block the cache no longer holds is a bug in the caller's
        geometry and raises."""
        key = self.blocks if blocks is None else tuple(blocks)
        if key not in self._views:
            by_block = {e.block: e for e in self.entries}
            missing = [b for b in key if b not in by_block]
            if missing:
                raise KeyError(f"blocks {missing} are not in the cache (it holds {self.blocks}): the cache is "
                               f"smaller than the context rule needs")
            chosen = [by_block[b] for b in key]
            self._views[key] = KVContext([e.k for e in chosen], [e.v for e in chosen]) if chosen else None
        return self._views[key]

    def clear(self) -> None:
        self.sink.clear()
        self.recent.clear()
        self._views.clear()

    def nbytes(self) -> int:
        """Bytes held by the entries (views share their tensors; each forward concatenates one layer)."""
        return sum(e.nbytes() for e in self.entries)

    def __len__(self) -> int:
        return len(self.sink) + len(self.recent)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "sink_blocks": self.sink_blocks,
            "recent_blocks": self.recent_blocks,
            "entries": [{"block": e.block, "k": e.k, "v": e.v, "latent": e.latent} for e in self.entries],
        }

    def load_state_dict(self, state: dict) -> None:
        if (state["sink_blocks"], state["recent_blocks"]) != (self.sink_blocks, self.recent_blocks):
            raise ValueError(
                f"cache geometry mismatch: saved sink/recent {state['sink_blocks']}/{state['recent_blocks']}, "
                f"this cache {self.sink_blocks}/{self.recent_blocks}")
        self.clear()
        for e in state["entries"]:
            self.commit(CacheEntry(block=int(e["block"]), k=e["k"], v=e["v"], latent=e["latent"]))
