"""In-memory video probing, clip decoding and mp4 remuxing (decord for frames, PyAV for containers).

Everything works on the file's bytes (no temp files), so the same code runs inside Ray tasks on any node.

decord2 3.4.0 stride bug: when the video width is not a multiple of 64 the decoded frame buffer has
rows padded (a 32-px-wide frame comes back as (32, 32, 6)) and `get_batch` fails ("size must exactly
match"). `_read_frames` therefore takes the true H, W from PyAV, reads such videos frame by frame and
un-pads each one: rows = buffer.reshape(H, -1)[:, :W*3].
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

REASONS = ("empty_file", "unreadable", "no_frames", "too_short")
MP4_COPY_CODECS = ("h264", "hevc", "mpeg4", "av1", "vp9")  # stream-copied into mp4; others re-encoded
_EPS = 1e-6


class VideoError(Exception):
    """A video that cannot be used; `reason` is one of REASONS (the shard stage counts by it)."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown VideoError reason {reason!r}; valid: {', '.join(REASONS)}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass
class VideoInfo:
    fps: float
    num_frames: int
    width: int
    height: int
    duration: float  # num_frames / fps, seconds


def _open(data: bytes):
    """(decord VideoReader, (H, W)) or VideoError."""
    import decord

    if not data:
        raise VideoError("empty_file", "zero-byte input")
    try:
        vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
    except Exception as e:  # decord raises DECORDError / RuntimeError on anything undecodable
        if _frameless(data):
            raise VideoError("no_frames", "the container holds no decodable video frame") from e
        raise VideoError("unreadable", f"decord cannot open the stream ({str(e).splitlines()[0][:200]})") from e
    if len(vr) == 0:
        raise VideoError("no_frames", "the video stream has no frames")
    return vr, _true_size(data, vr)


def _frameless(data: bytes) -> bool:
    """True when PyAV opens the container cleanly but finds no video stream or no frame in it
    (decord refuses such files at open time, so this tells "no_frames" from "unreadable")."""
    import av

    try:
        with av.open(io.BytesIO(data)) as c:
            if not c.streams.video:
                return True
            return next(iter(c.decode(c.streams.video[0])), None) is None
    except Exception:
        return False


def _true_size(data: bytes, vr) -> tuple[int, int]:
    """(H, W) from PyAV's codec context (decord's frame shape is mis-strided for odd widths)."""
    import av

    try:
        with av.open(io.BytesIO(data)) as c:
            cc = c.streams.video[0].codec_context
            if cc.width > 0 and cc.height > 0:
                return cc.height, cc.width
    except Exception:
        pass
    shape = vr[0].shape  # fallback: rows and columns are right, only the channel axis is padded
    return int(shape[0]), int(shape[1])


def _unpad(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """[H, W, 3] uint8 from a possibly row-padded decord frame buffer (see module docstring)."""
    if a.shape == (h, w, 3):
        return a
    return np.ascontiguousarray(a.reshape(h, -1)[:, : w * 3].reshape(h, w, 3))


def _read_frames(vr, indices: list[int], h: int, w: int) -> np.ndarray:
    """[N, H, W, 3] uint8 for source frame `indices` (get_batch when the width allows it)."""
    try:
        if w % 64 == 0:
            out = vr.get_batch(indices).asnumpy()
            if out.shape == (len(indices), h, w, 3):
                return out
        frames = [_unpad(vr[i].asnumpy(), h, w) for i in indices]
    except VideoError:
        raise
    except Exception as e:  # truncated data often opens fine and fails at decode time
        raise VideoError("unreadable", f"frame decode failed ({str(e).splitlines()[0][:200]})") from e
    return np.stack(frames)


def probe_bytes(data: bytes, verify: bool = True) -> VideoInfo:
    """Open `data` with decord and return its VideoInfo; VideoError(empty_file|unreadable|no_frames).

    verify=True decodes the first and last frames, which catches truncated files whose index still
    opens (costs one GOP decode).
    """
    vr, (h, w) = _open(data)
    n = len(vr)
    fps = float(vr.get_avg_fps())
    if not (fps > 0 and math.isfinite(fps)):
        raise VideoError("unreadable", f"invalid frame rate {fps}")
    if verify:
        _read_frames(vr, [0] if n == 1 else [0, n - 1], h, w)
    return VideoInfo(fps=fps, num_frames=n, width=w, height=h, duration=n / fps)


def frame_indices(src_fps: float, src_frames: int, num_frames: int, fps: float | None,
                  start_s: float | None = None, end_s: float | None = None,
                  rng: random.Random | None = None) -> list[int]:
    """Source frame indices of a `num_frames` window resampled to `fps` (None = native).

    Source frame i is shown at t = i / src_fps. The usable segment is [start_s, end_s) clipped to
    [0, duration); it holds n = floor((end - start) * fps) target frames. The window starts at
    k0 / fps after the segment start, k0 = 0, or uniform in [0, n - num_frames] when `rng` is given;
    target frame k at t_k = start + (k0 + k) / fps takes the nearest source frame,
    i = floor(t_k * src_fps + 1/2) (ties round up), clamped to the last frame.
    Raises VideoError("too_short") when n < num_frames.
    """
    fps = float(fps or src_fps)
    duration = src_frames / src_fps
    start = max(0.0, float(start_s or 0.0))
    end = duration if end_s is None else min(float(end_s), duration)
    avail = max(0, math.floor((end - start) * fps + _EPS))
    if avail < num_frames:
        raise VideoError("too_short", f"segment [{start:.3f}, {end:.3f}) s holds {avail} frames at "
                                      f"{fps:g} fps; need {num_frames}")
    k0 = rng.randint(0, avail - num_frames) if rng is not None else 0
    return [min(src_frames - 1, math.floor((start + (k0 + k) / fps) * src_fps + 0.5 + _EPS))
            for k in range(num_frames)]


def resize_crop(x: torch.Tensor, height: int, width: int, crop: str = "center",
                rng: random.Random | None = None) -> torch.Tensor:
    """[F, C, h, w] -> [F, C, height, width]: scale (aspect kept) so the frame covers the target
    (bilinear, antialiased), then crop the excess, centred or at a random offset."""
    if crop not in ("center", "random"):
        raise ValueError(f"unknown crop {crop!r}; valid: center, random")
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    if crop == "random":
        r = rng or random
        top, left = r.randint(0, nh - height), r.randint(0, nw - width)
    else:
        top, left = (nh - height) // 2, (nw - width) // 2
    return x[..., top: top + height, left: left + width]


def decode_clip(data: bytes, num_frames: int, fps: float | None, height: int, width: int,
                crop: str = "center", rng: random.Random | None = None,
                start_s: float | None = None, end_s: float | None = None) -> torch.Tensor:
    """Decode a clip from video bytes -> float32 [F, 3, height, width] in [-1, 1].

    Frame choice: `frame_indices` (fps resampling by nearest source frame, window at `start_s` or
    random when `rng` is given, VideoError("too_short") if the trimmed video is too short); then
    `resize_crop` (the same `rng` draws a random crop offset).
    """
    vr, (h, w) = _open(data)
    src_fps = float(vr.get_avg_fps())
    idx = frame_indices(src_fps, len(vr), num_frames, fps, start_s, end_s, rng)
    uniq = sorted(set(idx))
    frames = _read_frames(vr, uniq, h, w)
    pos = {i: j for j, i in enumerate(uniq)}
    x = torch.from_numpy(frames[[pos[i] for i in idx]]).permute(0, 3, 1, 2).float()
    x = resize_crop(x, height, width, crop, rng)
    return (x / 127.5 - 1.0).clamp(-1.0, 1.0).contiguous()


def remux_to_mp4(data: bytes, suffix: str) -> bytes:
    """mp4 bytes of a video: .mp4 returned unchanged; other containers get their first video stream
    stream-copied into mp4 when its codec is in MP4_COPY_CODECS, else re-encoded to h264 (libx264,
    yuv420p, crf 18, dims rounded down to even, constant frame rate = the stream's average rate).
    Audio and other streams are dropped. Raises VideoError on undecodable input."""
    if suffix.lower().lstrip(".") == "mp4":
        return data
    if not data:
        raise VideoError("empty_file", "zero-byte input")
    import av

    try:
        with av.open(io.BytesIO(data)) as src:
            if not src.streams.video:
                raise VideoError("no_frames", "no video stream")
            vin = src.streams.video[0]
            if vin.codec_context.name in MP4_COPY_CODECS:
                out = _stream_copy(src, vin)
            else:
                out = _reencode(src, vin)
    except VideoError:
        raise
    except Exception as e:
        raise VideoError("unreadable", f"remux failed ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from e
    return out


def _stream_copy(src, vin) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as dst:
        vout = dst.add_stream_from_template(vin)
        n = 0
        for pkt in src.demux(vin):
            if pkt.dts is None and pkt.pts is None:  # flush packet
                continue
            pkt.stream = vout
            dst.mux(pkt)
            n += 1
    if n == 0:
        raise VideoError("no_frames", "no video packets")
    return buf.getvalue()


def _reencode(src, vin) -> bytes:
    from fractions import Fraction

    import av

    rate = vin.average_rate or vin.guessed_rate or Fraction(25)
    w, h = vin.codec_context.width // 2 * 2, vin.codec_context.height // 2 * 2
    if w < 2 or h < 2:
        raise VideoError("unreadable", f"frame size {vin.codec_context.width}x{vin.codec_context.height}")
    buf = io.BytesIO()
    n = 0
    with av.open(buf, "w", format="mp4") as dst:
        vout = dst.add_stream("libx264", rate=rate)
        vout.width, vout.height, vout.pix_fmt = w, h, "yuv420p"
        vout.options = {"crf": "18"}
        vout.codec_context.time_base = Fraction(1, 1) / rate
        for frame in src.decode(vin):
            full = frame.color_range == 2 or frame.format.name.startswith("yuvj")  # JPEG range
            f = frame.reformat(width=w, height=h, format="yuv420p", src_color_range=2 if full else 1,
                               dst_color_range=1)  # limited (MPEG) range, what decoders assume
            f.pts, f.time_base = n, vout.codec_context.time_base
            n += 1
            for pkt in vout.encode(f):
                dst.mux(pkt)
        for pkt in vout.encode():
            dst.mux(pkt)
    if n == 0:
        raise VideoError("no_frames", "no decodable frames")
    return buf.getvalue()
