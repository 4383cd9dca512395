"""Exact chunking of a frame stream into fixed-duration chunks, and the first / last W-second spans.

Frame i is shown at t_i = i / fps. Chunk k covers the time interval [k c, (k + 1) c) (c =
`chunk_seconds`), so it holds the frames

    start_k = ceil(k c fps) <= i < ceil((k + 1) c fps) = stop_k,      i.e.  k = floor(i / (c fps)).

Every frame lies in exactly one chunk, chunks are contiguous and in order, and when c fps is not an
integer (29.97 fps, 1/3 s chunks) chunk sizes alternate between floor and ceil of c fps without the
boundaries drifting. fps and c are turned into exact fractions first (`to_fraction`: 29.97 fps
written as 30000/1001 or 29.97002997002997 both become 30000/1001), so no boundary depends on float
rounding. c fps must be >= 1, otherwise some chunks would be empty.

A stream that ends inside chunk k keeps it: the last chunk is *partial* when it has fewer frames than
its nominal size stop_k - start_k.

Spans for first-vs-last metrics (the Rolling Forcing paper's Delta Drift compares the first and the
last 5 s): with s = max(1, round(W fps)) frames and n frames in all, the first span is [0, min(s, n))
and the last span is [max(0, n - s), n). They overlap when n < 2 s (reported, not an error).

`Chunker` does the same incrementally: `push(n)` splits the next n frames of a stream into pieces
that each lie in one chunk, and says which chunks those pieces complete, so per-chunk statistics can
be accumulated without holding frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

MAX_DENOMINATOR = 100_000  # recovers 30000/1001-style NTSC rates and 1/3 s from their float spellings


def to_fraction(x: float | int | str | Fraction) -> Fraction:
    """An exact positive rational for `x` (floats are snapped to the nearest small-denominator value)."""
    f = x if isinstance(x, Fraction) else Fraction(x).limit_denominator(MAX_DENOMINATOR)
    if f <= 0:
        raise ValueError(f"expected a positive number, got {x}")
    return f


@dataclass(frozen=True)
class ChunkGrid:
    """The chunk geometry of a stream: `fps` frames per second, chunks of `chunk_seconds`."""

    fps: Fraction
    chunk_seconds: Fraction

    @classmethod
    def of(cls, fps: float | Fraction, chunk_seconds: float | Fraction) -> ChunkGrid:
        grid = cls(to_fraction(fps), to_fraction(chunk_seconds))
        if grid.frames_per_chunk < 1:
            raise ValueError(f"chunks of {float(grid.chunk_seconds):g} s at {float(grid.fps):g} fps hold "
                             f"{float(grid.frames_per_chunk):.3g} frames; need at least one frame per chunk")
        return grid

    @property
    def frames_per_chunk(self) -> Fraction:
        return self.fps * self.chunk_seconds

    def start(self, k: int) -> int:
        """First frame of chunk k: ceil(k c fps)."""
        return math.ceil(k * self.frames_per_chunk)

    def chunk_of(self, i: int) -> int:
        """The chunk holding frame i: floor(i / (c fps))."""
        if i < 0:
            raise ValueError(f"negative frame index {i}")
        return math.floor(i / self.frames_per_chunk)

    def nominal_size(self, k: int) -> int:
        return self.start(k + 1) - self.start(k)


@dataclass(frozen=True)
class Chunk:
    """Frames [start, stop) of a stream, chunk `index`; `partial` when the stream ended inside it."""

    index: int
    start: int
    stop: int
    nominal_stop: int
    fps: float

    @property
    def num_frames(self) -> int:
        return self.stop - self.start

    @property
    def partial(self) -> bool:
        return self.stop < self.nominal_stop

    @property
    def start_s(self) -> float:
        return self.start / self.fps

    @property
    def stop_s(self) -> float:
        """End time of the chunk's frames: (stop) / fps, i.e. the last frame's time plus one frame."""
        return self.stop / self.fps

    def as_dict(self) -> dict:
        return {"index": self.index, "start_frame": self.start, "stop_frame": self.stop,
                "frames": self.num_frames, "start_s": self.start_s, "stop_s": self.stop_s,
                "partial": self.partial}


def _chunk(grid: ChunkGrid, k: int, stop: int | None = None) -> Chunk:
    nominal = grid.start(k + 1)
    return Chunk(index=k, start=grid.start(k), stop=nominal if stop is None else stop, nominal_stop=nominal,
                 fps=float(grid.fps))


def chunk_frames(num_frames: int, fps: float, chunk_seconds: float) -> list[Chunk]:
    """All chunks of a finite stream of `num_frames` frames (the last one possibly partial)."""
    if num_frames < 0:
        raise ValueError(f"negative frame count {num_frames}")
    grid = ChunkGrid.of(fps, chunk_seconds)
    if num_frames == 0:
        return []
    last = grid.chunk_of(num_frames - 1)
    return [_chunk(grid, k, min(grid.start(k + 1), num_frames)) for k in range(last + 1)]


def span_frames(fps: float, window_s: float) -> int:
    """Frames in a W-second span: max(1, round(W fps)) (exact rational arithmetic, halves round up)."""
    s = to_fraction(window_s) * to_fraction(fps)
    return max(1, math.floor(s + Fraction(1, 2)))


def spans(num_frames: int, fps: float, window_s: float) -> dict:
    """First and last W-second spans of an n-frame stream as half-open frame ranges."""
    s = span_frames(fps, window_s)
    first = (0, min(s, num_frames))
    last = (max(0, num_frames - s), num_frames)
    return {"window_s": float(window_s), "span_frames": s, "first": list(first), "last": list(last),
            "overlap": num_frames > 0 and last[0] < first[1]}


@dataclass(frozen=True)
class Piece:
    """`count` frames of the current batch, [offset, offset + count) within it, all in chunk `chunk`;
    `completes` when the piece's last frame is the chunk's last."""

    chunk: int
    offset: int
    count: int
    completes: bool


class Chunker:
    """Streaming chunking: push the sizes of consecutive batches, get per-chunk pieces back.

        c = Chunker(fps=16, chunk_seconds=1.0)
        for frames in stream:
            for p in c.push(len(frames)):
                stats[p.chunk].add(frames[p.offset: p.offset + p.count])
                if p.completes: finalise(c.chunk(p.chunk))
        last = c.finish()   # the trailing partial chunk, if any (already-complete chunks are not repeated)
    """

    def __init__(self, fps: float, chunk_seconds: float):
        self.grid = ChunkGrid.of(fps, chunk_seconds)
        self.num_frames = 0

    def push(self, n: int) -> list[Piece]:
        if n < 0:
            raise ValueError(f"negative batch size {n}")
        pieces, pos, end = [], self.num_frames, self.num_frames + n
        while pos < end:
            k = self.grid.chunk_of(pos)
            stop = min(self.grid.start(k + 1), end)
            pieces.append(Piece(chunk=k, offset=pos - self.num_frames, count=stop - pos,
                                completes=stop == self.grid.start(k + 1)))
            pos = stop
        self.num_frames = end
        return pieces

    def chunk(self, k: int) -> Chunk:
        """Chunk k as far as the stream has reached (complete, or partial if the stream is inside it)."""
        return _chunk(self.grid, k, min(self.grid.start(k + 1), self.num_frames))

    def open_chunk(self) -> int | None:
        """Index of the chunk that has frames but is not complete yet, else None."""
        if self.num_frames == 0:
            return None
        k = self.grid.chunk_of(self.num_frames - 1)
        return None if self.num_frames == self.grid.start(k + 1) else k

    def finish(self) -> Chunk | None:
        """The partial chunk the stream ended in (None when it ended on a chunk boundary)."""
        k = self.open_chunk()
        return None if k is None else self.chunk(k)


__all__ = ["Chunk", "ChunkGrid", "Chunker", "Piece", "chunk_frames", "span_frames", "spans", "to_fraction"]
