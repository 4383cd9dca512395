"""Rolling-window bookkeeping: which blocks each pass holds, at which noise level, what they see.

All pure functions over block indices. Notation (ARCHITECTURE.md §2): N blocks, K denoising steps
(= window blocks), S sink blocks, C context blocks (the teacher's training length in blocks).
Step index k = 0 is the noisiest level tau[0] (pure noise), k = K-1 the least noisy; a block whose
prediction at k = K-1 is made is final.
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
    """Sink blocks 0..min(S, first)-1 plus the `recent_blocks` most recent non-sink blocks before
    `first_block` (what a cache of that geometry holds when block `first_block` comes next).
    Windows starting at block 0 see nothing outside themselves."""
    sink = tuple(range(min(sink_blocks, first_block)))
    recent = tuple(range(max(sink_blocks, first_block - recent_blocks), first_block))
    return sink + recent


def context_for(first_block: int, query_blocks: int, sink_blocks: int, context_blocks: int,
                clean: bool = False, reference_compat: bool = False) -> tuple[int, ...]:
    """THE context rule: committed blocks a forward over query blocks first..first+q-1 attends to.

    Every forward -- a rolling window pass, a finished block's clean pass (`clean=True`, q = 1), a
    block-AR step, a prompt recache, a training rollout, history priming -- sees

        sink blocks 0..min(S, first)-1  +  the most recent blocks before `first` that fit,

    so that sink + recent + query <= C = `context_blocks` (the teacher's training length). Hence a
    full window of K blocks sees C - S - K recent blocks, a window shrinking at the end of a stream
    (q < K) sees C - S - q, and a clean pass sees C - S - 1 (Wan, C = 7, S = 1, K = 5: 1, 2..5, 5).

    `reference_compat` reproduces TencentARC/RollingForcing's clean pass: it attends to "the last
    C * fpb cached frames" including itself, i.e. the C - 1 most recent blocks before it whatever
    they are -- which contain the sink only while first <= C - 1 (its 1-block sink drops out of
    the clean pass from block C on). Window passes are the same in both modes.
    """
    if first_block < 0 or query_blocks < 1:
        raise ValueError(f"need first_block >= 0 and query_blocks >= 1, got {first_block}, {query_blocks}")
    budget = context_blocks - query_blocks
    if budget < 0:
        raise ValueError(f"a {query_blocks}-block query does not fit a {context_blocks}-block context")
    if clean and reference_compat:
        return tuple(range(max(0, first_block - budget), first_block))
    sink = tuple(range(min(sink_blocks, first_block, budget)))
    recent = tuple(range(max(sink_blocks, first_block - (budget - len(sink))), first_block))
    return sink + recent


def cache_recent_blocks(sink_blocks: int, context_blocks: int, reference_compat: bool = False) -> int:
    """FIFO size of the rolling cache: the most recent (non-sink) blocks any forward needs.

    The largest need is a 1-block query (a clean pass, a block-AR step, the last end window):
    C - S - 1 recent blocks; the reference-compatible clean pass reaches back C - 1 blocks.
    """
    return context_blocks - 1 if reference_compat else context_blocks - sink_blocks - 1


@dataclass(frozen=True)
class ContextRule:
    """The stream geometry `context_for` needs, bundled for the backends (stream.* in config)."""

    sink_blocks: int
    context_blocks: int
    reference_compat: bool = False

    def __post_init__(self):
        if self.sink_blocks < 0 or self.sink_blocks >= self.context_blocks:
            raise ValueError(f"need 0 <= sink_blocks < context_blocks, got {self.sink_blocks}, {self.context_blocks}")
        if self.reference_compat and self.sink_blocks != 1:
            raise ValueError(f"reference_compat reproduces the reference's 1-block sink, got sink_blocks={self.sink_blocks}")

    @staticmethod
    def from_stream(stream) -> ContextRule:
        """From a `pipeline.config.StreamConfig`."""
        return ContextRule(stream.sink_blocks, stream.context_blocks, stream.reference_compat)

    def window(self, first_block: int, query_blocks: int) -> tuple[int, ...]:
        return context_for(first_block, query_blocks, self.sink_blocks, self.context_blocks,
                           reference_compat=self.reference_compat)

    def clean(self, block: int) -> tuple[int, ...]:
        return context_for(block, 1, self.sink_blocks, self.context_blocks, clean=True,
                           reference_compat=self.reference_compat)

    @property
    def cache_recent(self) -> int:
        return cache_recent_blocks(self.sink_blocks, self.context_blocks, self.reference_compat)


def gradient_passes(num_blocks: int, num_steps: int, offset: int) -> list[int]:
    """Passes that run with gradient in non-overlapping-window training: w ≡ offset (mod K).

    Every block b is in the K consecutive passes b..b+K-1, exactly one of which is ≡ offset, so the
    gradient windows tile the video and each block gets gradient exactly once.
    """
    if not 0 <= offset < num_steps:
        raise ValueError(f"offset {offset} outside [0, {num_steps})")
    return [w for w in range(num_rolling_passes(num_blocks, num_steps)) if w % num_steps == offset]
