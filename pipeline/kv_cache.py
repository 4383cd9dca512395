"""Attention sink + FIFO rolling KV cache with pre-RoPE keys and a fixed size.

Holds, per committed (clean) block, its self-attention keys/values for every layer *before* RoPE
and its clean latent (for recomputing K/V under a new prompt). Contents are always exactly the
blocks visible to the next forward (`windows.visible_blocks`): the first `sink_blocks` blocks,
forever, plus the `recent_blocks` most recent later ones. RoPE is applied at attention time with
positions [sink | recent | queries] counted from 0, so memory and positions stay bounded however
long the stream runs.

Entry tensors: k, v [layers, B, T, n, d] (T = tokens per block); latent [B, frames_per_block, C, H, W].
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor


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
        self._context: tuple[Tensor, Tensor] | None = None

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
        self._context = None

    def context(self) -> tuple[Tensor, Tensor] | None:
        """Concatenated (k, v) [layers, B, T_ctx, n, d] of all entries, assembled once per commit."""
        if self._context is None:
            entries = self.entries
            if not entries:
                return None
            self._context = (torch.cat([e.k for e in entries], dim=2), torch.cat([e.v for e in entries], dim=2))
        return self._context

    def clear(self) -> None:
        self.sink.clear()
        self.recent.clear()
        self._context = None

    def nbytes(self) -> int:
        """Bytes held by the entries (the assembled context view adds at most the same again)."""
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
