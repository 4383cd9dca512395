"""Streaming mp4 writer (PyAV / libx264): frames are encoded as they arrive, never buffered whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def to_uint8_frames(video: Tensor) -> np.ndarray:
    """[B=1, n, 3, H, W] or [n, 3, H, W] in [-1, 1] -> uint8 [n, H, W, 3]."""
    if video.dim() == 5:
        if video.shape[0] != 1:
            raise ValueError(f"expected a single video, got batch {video.shape[0]}")
        video = video[0]
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 1).cpu().numpy()


class Mp4Writer:
    """with Mp4Writer(path, fps, width, height) as w: w.write(frames_uint8[n, H, W, 3])

    `options` go to the encoder (libx264), `container_options` to the mp4 muxer: e.g. movflags for a
    fragmented file that is readable while it is still being written (`rollforge serve` does that).
    """

    # mbtree off: with x264's macroblock-tree rate control the same frames can encode (and even
    # decode) differently from run to run; off, output is byte-identical for identical input.
    DEFAULT_OPTIONS = {"x264-params": "mbtree=0"}

    def __init__(self, path: str | Path, fps: int, width: int, height: int, crf: int = 18,
                 options: dict[str, str] | None = None, container_options: dict[str, str] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.frames_written = 0
        import av  # here, not at import: a stream that writes no mp4 (benchmarks) needs no PyAV

        self._av = av
        self._container = av.open(str(self.path), mode="w", options=container_options or {})
        self._stream = self._container.add_stream("libx264", rate=fps)
        # yuv420p needs even sizes; odd tiny sizes are padded by one pixel rather than rejected
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": str(crf), **self.DEFAULT_OPTIONS, **(options or {})}
        self._size = (height, width)

    def write(self, frames: np.ndarray) -> None:
        for frame in frames:
            if frame.shape[:2] != self._size:
                raise ValueError(f"frame of size {frame.shape[:2]} written to a {self._size} video")
            if self._stream.height != self._size[0] or self._stream.width != self._size[1]:
                frame = np.pad(frame, ((0, self._stream.height - self._size[0]), (0, self._stream.width - self._size[1]), (0, 0)), mode="edge")
            for packet in self._stream.encode(self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                self._container.mux(packet)
            self.frames_written += 1

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
