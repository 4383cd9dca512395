"""Frame strips: a few frames of each stream, evenly spaced in time, drawn as one PNG per sampler.

    keep = StripCollector(num_frames=240, fps=16, count=8)   # which frames to keep of a 240-frame stream
    keep.add(frames)                                          # [n, H, W, 3] uint8, in stream order
    write_strip([keep, ...], prompts, path, title)            # rows = prompts, columns = times

A strip shows at a glance what the drift numbers summarise: whether the object is still there, in
its colour and size, at the end of the stream. Frames are drawn with nearest-neighbour upscaling so
32-px frames stay legible. Only `count` frames per stream are held in memory.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

STRIP_FRAMES = 8  # columns: frames kept per stream
STRIP_ROWS = 4  # prompts drawn per sampler (the first ones)


class StripCollector:
    """Keeps frames round(linspace(0, num_frames - 1, count)) of a stream fed in order."""

    def __init__(self, num_frames: int, fps: float, count: int = STRIP_FRAMES):
        if num_frames < 1 or count < 1:
            raise ValueError(f"StripCollector: need num_frames >= 1 and count >= 1, got {num_frames}, {count}")
        self.fps = float(fps)
        self.indices = sorted(set(np.round(np.linspace(0, num_frames - 1, min(count, num_frames))).astype(int).tolist()))
        self.frames: dict[int, np.ndarray] = {}
        self._seen = 0

    def add(self, frames: np.ndarray) -> None:
        n = len(frames)
        for i in self.indices:
            if self._seen <= i < self._seen + n:
                self.frames[i] = np.array(frames[i - self._seen], dtype=np.uint8, copy=True)
        self._seen += n

    @property
    def times_s(self) -> list[float]:
        return [i / self.fps for i in self.indices]


def write_strip(streams: list[StripCollector], labels: list[str], path: str | Path, title: str,
                max_rows: int = STRIP_ROWS) -> Path:
    """One row per stream (the first `max_rows`), one column per kept frame, time above each column."""
    rows = streams[:max_rows]
    cols = max((len(s.indices) for s in rows), default=1)
    fig = Figure(figsize=(1.15 * cols + 1.6, 1.25 * max(len(rows), 1) + 0.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize="medium")
    for r, stream in enumerate(rows):
        for c, i in enumerate(stream.indices):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            frame = stream.frames.get(i)
            if frame is not None:
                ax.imshow(frame, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{i / stream.fps:.1f} s", fontsize="small")
            if c == 0:
                ax.set_ylabel(_label(labels[r] if r < len(labels) else str(r)), fontsize="x-small", rotation=0,
                              ha="right", va="center")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _label(text: str) -> str:
    """A row label: the prompt wrapped to 22 characters, at most 4 lines."""
    return "\n".join(textwrap.wrap(text, 22)[:4])


__all__ = ["STRIP_FRAMES", "StripCollector", "write_strip"]
