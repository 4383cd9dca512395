"""Rolling-window bookkeeping: which blocks each pass holds, at which noise level, what they see.

All pure functions over block indices. Notation (ARCHITECTURE.md §2): N blocks, K denoising steps
(= window blocks), S sink blocks, R recent blocks. Step index k = 0 is the noisiest level tau[0]
(pure noise), k = K-1 the least noisy; a block whose prediction at k = K-1 is made is final.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pass:
    """One forward of the rolling window.

    index:  w in [0, N + K - 1)
    blocks: block indices in the window, oldest first
    steps:  per block, its step index k (oldest block has the largest k, i.e. is least noisy)
    """

    index: int
    blocks: tuple[int, ...]
    steps: tuple[int, ...]

    @property
    def first(self) -> int:
        return self.blocks[0]


def rolling_pass(w: int, num_blocks: int, num_steps: int) -> Pass:
    """Window at pass w: blocks max(0, w-K+1) .. min(N-1, w); block b sits at step k = w - b.

    The first K-1 and last K-1 passes hold partial windows; every block b is in passes b .. b+K-1,
    going through k = 0 .. K-1 in order, and is final at pass b + K - 1.
    """
    if not 0 <= w < num_blocks + num_steps - 1:
        raise ValueError(f"pass {w} outside [0, {num_blocks + num_steps - 1})")
    blocks = tuple(range(max(0, w - num_steps + 1), min(num_blocks - 1, w) + 1))
    return Pass(index=w, blocks=blocks, steps=tuple(w - b for b in blocks))


def num_rolling_passes(num_blocks: int, num_steps: int) -> int:
    return num_blocks + num_steps - 1


def rolling_passes(num_blocks: int | None, num_steps: int):
    """All passes in order; `num_blocks=None` streams forever (no end phase)."""
    w = 0
    while num_blocks is None or w < num_blocks + num_steps - 1:
        yield rolling_pass(w, num_blocks if num_blocks is not None else w + 1, num_steps)
        w += 1


def visible_blocks(first_block: int, sink_blocks: int, recent_blocks: int) -> tuple[int, ...]:
    """Committed (clean) blocks a forward whose oldest query block is `first_block` attends to.

    = sink blocks 0..min(S, first)-1  plus the R most recent non-sink blocks before `first_block`.
    Windows starting at block 0 see nothing outside themselves.
    """
    sink = tuple(range(min(sink_blocks, first_block)))
    recent = tuple(range(max(sink_blocks, first_block - recent_blocks), first_block))
    return sink + recent


def recent_capacity(sampler: str, context_blocks: int, sink_blocks: int, window_blocks: int) -> int:
    """FIFO size that keeps sink + recent + query blocks within the teacher's context."""
    query = {"rolling": window_blocks, "block_ar": 1}
    if sampler not in query:
        raise ValueError(f"no rolling cache for sampler {sampler!r}; valid: {', '.join(query)}")
    return context_blocks - sink_blocks - query[sampler]


def gradient_passes(num_blocks: int, num_steps: int, offset: int) -> list[int]:
    """Passes that run with gradient in non-overlapping-window training: w ≡ offset (mod K).

    Every block b is in the K consecutive passes b..b+K-1, exactly one of which is ≡ offset, so the
    gradient windows tile the video and each block gets gradient exactly once.
    """
    if not 0 <= offset < num_steps:
        raise ValueError(f"offset {offset} outside [0, {num_steps})")
    return [w for w in range(num_rolling_passes(num_blocks, num_steps)) if w % num_steps == offset]
