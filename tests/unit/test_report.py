"""The evaluation report and plots, from a result built the way `evaluate` builds one.

The result is not hand-written: procedural-world clips (`data.world.render`) are streamed in blocks
of 3 frames into real `DriftAccumulator`s and mp4 writers, and timed like `measure_stream` times a
stream. Three "samplers" cover the shapes a report must handle:
  rolling        the clean clip, 3 s (three 1-s chunks);
  block_ar       the same clip fading and losing saturation over time (visible drift in every curve);
  bidirectional  1 s (a single chunk) without a quality scorer (quality undefined: None everywhere).
Cheap stand-ins replace BRISQUE and EfficientNet (a gradient-energy sharpness score and 8 x 8
thumbnails as features) so the test needs no model weights; they are real functions of the frames.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from data.world import render, sample_world
from evaluation.drift import LUMA, DriftAccumulator
from evaluation.evaluate import flat_metrics
from evaluation.plots import chunk_series, lag_series, write_plots
from evaluation.report import COLUMNS, fmt, summary_rows, write_report
from evaluation.strips import StripCollector, write_strip
from evaluation.throughput import peak_rss_bytes
from evaluation.world_checks import check_world_frames, chunk_pass_rates
from pipeline.video_io import Mp4Writer

FPS, SIZE, BLOCK = 8, 32, 3
PROMPTS = ["a <b>red</b> circle & a | blue square", "plain prompt"]
PLOTS = {"quality", "similarity_to_first", "flicker", "colour", "similarity_vs_dt", "throughput"}


class Sharpness:
    """Mean gradient magnitude of luma (a real, if crude, no-reference quality score)."""

    name = "gradient_energy"
    higher_is_better = True

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        y = frames.astype(np.float32) @ LUMA
        gy, gx = np.gradient(y, axis=(1, 2))
        return np.sqrt(gx ** 2 + gy ** 2).mean(axis=(1, 2))


class Thumbnails:
    """8 x 8 mean-pooled RGB thumbnails as 192-d features."""

    name = "thumbnail8"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        n, h, w, _ = frames.shape
        return frames.reshape(n, 8, h // 8, 8, w // 8, 3).astype(np.float32).mean(axis=(2, 4)).reshape(n, -1)


def clip(prompt_index: int, seconds: float) -> np.ndarray:
    spec = sample_world(random.Random(prompt_index), SIZE, SIZE, FPS, seconds)
    return np.stack(list(render(spec)))


def fade(frames: np.ndarray) -> np.ndarray:
    """Frame i is blended towards its own grey and darkened by up to 60 % at the end."""
    s = np.linspace(0, 1, len(frames))[:, None, None, None]
    x = frames.astype(np.float32)
    grey = (x @ LUMA)[..., None]
    return np.clip((x + (grey - x) * s) * (1 - 0.6 * s), 0, 255).astype(np.uint8)


def stream_run(out, sampler: str, i: int, frames: np.ndarray, quality) -> dict:
    """What `evaluate` does for one (sampler, prompt): timed stream, mp4, drift summary."""
    acc = DriftAccumulator(FPS, 1.0, quality=quality, features=Thumbnails(), window_s=min(5.0, len(frames) / FPS / 2))
    video = out / "videos" / f"{sampler}_{i}.mp4"
    start, first = time.perf_counter(), None
    with Mp4Writer(video, FPS, SIZE, SIZE) as writer:
        for b in range(0, len(frames), BLOCK):
            block = frames[b: b + BLOCK]
            first = first if first is not None else time.perf_counter() - start
            writer.write(block)
            acc.add(block)
    wall = time.perf_counter() - start
    timing = {"sampler": sampler, "video_frames": len(frames), "wall_s": wall, "fps": len(frames) / wall,
              "first_frame_latency_s": first, "peak_rss_bytes": peak_rss_bytes(), "kv_cache_bytes": 0}
    return {"prompt": PROMPTS[i], "video": video.relative_to(out).as_posix(), "throughput": timing,
            "drift": acc.summary()}


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> tuple[dict, object]:
    out = tmp_path_factory.mktemp("eval")
    samplers = {}
    for sampler, seconds, transform, quality in (("rolling", 3.0, None, Sharpness()),
                                                 ("block_ar", 3.0, fade, Sharpness()),
                                                 ("bidirectional", 1.0, None, None)):
        runs = []
        for i in range(len(PROMPTS)):
            frames = clip(i, seconds)
            runs.append(stream_run(out, sampler, i, transform(frames) if transform else frames, quality))
        samplers[sampler] = {"runs": runs,
                             "fps": float(np.mean([r["throughput"]["fps"] for r in runs])),
                             "first_frame_latency_s": float(np.mean([r["throughput"]["first_frame_latency_s"]
                                                                     for r in runs])),
                             "peak_rss_mb": max(r["throughput"]["peak_rss_bytes"] for r in runs) / 2 ** 20,
                             "kv_cache_mb": 0.0}
    res = {"checkpoint": None, "seconds": 3.0, "prompts": PROMPTS, "machine": {"cpu_count": 2}, "samplers": samplers}
    # exactly what metrics.json holds (evaluate writes it with json.dumps(..., default=float))
    return json.loads(json.dumps(res, default=float)), out


@pytest.fixture(scope="module")
def written(result) -> dict:
    res, out = result
    return write_report(res, out)


class Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href"):
                self.refs.append((tag, value))


def test_report_files_and_every_png_opens(result, written):
    _, out = result
    paths = written
    assert paths["md"].is_file() and paths["html"].is_file()
    assert set(paths["plots"]) == PLOTS
    for png in paths["plots"].values():
        assert png.parent == out / "plots"
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200


def test_html_is_self_contained_and_references_existing_files(result, written):
    res, out = result
    page = written["html"].read_text(encoding="utf-8")
    parser = Refs()
    parser.feed(page)
    tags = [t for t, _ in parser.refs]
    assert tags.count("img") == len(PLOTS)
    assert tags.count("video") == len(PROMPTS) * len(res["samplers"])
    for _, ref in parser.refs:
        assert "://" not in ref and not ref.startswith("/"), ref  # relative: the folder moves as one
        assert (out / ref).is_file(), ref
    assert "<script" not in page and "<link" not in page


def test_summary_table_has_each_sampler_and_its_numbers(result, written):
    res, _ = result
    headers, rows = summary_rows(res)
    assert headers[0] == "sampler" and len(headers) == len(COLUMNS) + 1
    by_sampler = {r[0]: dict(zip(headers, r)) for r in rows}
    assert list(by_sampler) == ["rolling", "block_ar", "bidirectional"]
    assert by_sampler["rolling"]["fps"] == fmt(res["samplers"]["rolling"]["fps"], "{:.2f}")
    drifts = [r["drift"]["quality"]["delta_drift"] for r in res["samplers"]["block_ar"]["runs"]]
    assert by_sampler["block_ar"]["quality ΔDrift ↓"] == fmt(np.mean(drifts), "{:.3f}")
    assert by_sampler["bidirectional"]["quality ΔDrift ↓"] == "n/a"  # no quality scorer
    md, page = written["md"].read_text(encoding="utf-8"), written["html"].read_text(encoding="utf-8")
    for sampler in by_sampler:
        assert f"| {sampler} |" in md
        assert f"<td class=\"l\">{sampler}</td>" in page
    for name in PLOTS:
        assert f"](plots/{name}.png)" in md


def test_prompts_are_escaped(written):
    paths = written
    page = paths["html"].read_text(encoding="utf-8")
    assert "<b>red</b>" not in page and "&lt;b&gt;red&lt;/b&gt; circle &amp; a | blue square" in page
    md = paths["md"].read_text(encoding="utf-8")
    assert "&lt;b&gt;red&lt;/b&gt; circle & a \\| blue square" in md  # a raw | would split the table row


def test_series_are_means_over_prompts_at_chunk_mid_times(result):
    res, _ = result
    t, q = chunk_series(res, "block_ar", lambda c: c.get("quality"))
    assert t.tolist() == [0.5, 1.5, 2.5]
    per_run = [[c["quality"] for c in r["drift"]["chunks"]] for r in res["samplers"]["block_ar"]["runs"]]
    np.testing.assert_allclose(q, np.mean(per_run, axis=0))
    _, sim = chunk_series(res, "block_ar", lambda c: c.get("similarity_to_first"))
    assert sim[0] == pytest.approx(1.0) and sim[-1] < sim[0]  # the fade drifts away from chunk 0
    t1, q1 = chunk_series(res, "bidirectional", lambda c: c.get("quality"))
    assert t1.tolist() == [0.5] and math.isnan(q1[0])  # one chunk, quality undefined
    dt, s = lag_series(res, "rolling")
    assert dt.tolist() == [1.0, 2.0] and np.isfinite(s).all()
    assert lag_series(res, "bidirectional")[0].size == 0  # a single chunk has no lags


def test_plots_survive_missing_metrics(tmp_path, result):
    """No drift at all and undefined throughput: every plot is still written (saying 'no data')."""
    res, _ = result
    bare = {"seconds": 1.0, "prompts": ["x"], "samplers": {
        "rolling": {"runs": [{"prompt": "x", "video": "videos/none.mp4", "throughput": {}}], "fps": None,
                    "first_frame_latency_s": float("nan"), "peak_rss_mb": 1.0},
        "block_ar": {"runs": [{"prompt": "x", "drift": res["samplers"]["bidirectional"]["runs"][0]["drift"]}],
                     "fps": 3.0, "first_frame_latency_s": 0.1, "peak_rss_mb": 1.0}}}
    paths = write_plots(bare, tmp_path / "plots")
    assert set(paths) == PLOTS
    for png in paths.values():
        with Image.open(png) as im:
            im.verify()
    rows = dict((r[0], r) for r in summary_rows(bare)[1])
    assert rows["rolling"][1] == "n/a" and rows["rolling"][2] == "n/a"


def test_world_pass_rates_curve_and_frame_strips(tmp_path, result):
    """With world checks the summary gains the chunk pass rates, a per-chunk curve is plotted and each
    sampler's frame strip is shown; a stream faded in its last second fails only its last chunk."""
    res, out = result
    res = copy.deepcopy(res)
    def late_fade(frames):
        return np.concatenate([frames[:2 * FPS], fade(frames)[2 * FPS:]])

    for sampler, transform in (("rolling", None), ("block_ar", late_fade)):
        summary, strips = res["samplers"][sampler], []
        for i, run in enumerate(summary["runs"]):
            spec = sample_world(random.Random(i), SIZE, SIZE, FPS, 3.0)
            frames = clip(i, 3.0) if transform is None else transform(clip(i, 3.0))
            run["world"] = check_world_frames(frames, spec)
            strips.append(StripCollector(len(frames), FPS))
            for b in range(0, len(frames), BLOCK):
                strips[-1].add(frames[b: b + BLOCK])
        summary.update(chunk_pass_rates([r["world"] for r in summary["runs"]]))
        summary["strip"] = write_strip(strips, PROMPTS, out / "plots" / f"strip_{sampler}.png",
                                       sampler).relative_to(out).as_posix()
    rolling, faded = res["samplers"]["rolling"], res["samplers"]["block_ar"]
    assert rolling["world_chunk_pass_rate"] == 1.0 and rolling["world_chunk_pass_rate_by_chunk"] == [1.0] * 3
    assert faded["world_chunk_pass_rate_by_chunk"] == [1.0, 1.0, 0.0]
    assert faded["world_pass_rate_first_third"] == 1.0 and faded["world_pass_rate_last_third"] == 0.0
    flat = flat_metrics(res)
    assert flat["rolling/world_chunk_pass_rate"] == 1.0 and flat["block_ar/world_drift"] == 1.0
    paths = write_report(res, tmp_path)
    assert "world_pass_rate" in paths["plots"]
    headers, rows = summary_rows(res)
    row = dict(zip(headers, rows[1]))
    assert row["world chunks passed ↑"] == fmt(100 * faded["world_chunk_pass_rate"], "{:.0f} %")
    assert row["last third ↑"] == "0 %" and dict(zip(headers, rows[2]))["first third ↑"] == "n/a"
    assert dict(zip(headers, rows[0]))["chunks failing"] == "none"
    worst = max(faded["world_check_failure_rates"].items(), key=lambda kv: kv[1])  # the fade's last chunk
    assert worst[1] == pytest.approx(1 / 3) and row["chunks failing"].startswith(f"{worst[0]} 33 %")
    assert flat[f"block_ar/world_{worst[0]}_failure_rate"] == pytest.approx(1 / 3)
    md = paths["md"].read_text(encoding="utf-8")
    assert "## Frames over time" in md and "strip_rolling.png" in md and "strip_block_ar.png" in md
    for sampler in ("rolling", "block_ar"):
        with Image.open(out / res["samplers"][sampler]["strip"]) as im:
            assert im.size[0] > im.size[1] > 100


def test_strip_keeps_evenly_spaced_frames_across_blocks():
    keep = StripCollector(num_frames=10, fps=5, count=4)
    assert keep.indices == [0, 3, 6, 9]
    frames = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), dtype=np.uint8)
    for b in range(0, 10, 3):
        keep.add(frames[b: b + 3])
    assert sorted(keep.frames) == [0, 3, 6, 9] and [int(f[0, 0, 0]) for _, f in sorted(keep.frames.items())] == [0, 3, 6, 9]
    assert keep.times_s == [0.0, 0.6, 1.2, 1.8]
    assert StripCollector(num_frames=2, fps=1, count=8).indices == [0, 1]
