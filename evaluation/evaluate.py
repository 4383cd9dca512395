"""The evaluate stage: stream each prompt with each sampler from a checkpoint, measure, write videos.

    result = evaluate(cfg, checkpoint, out_dir, samplers=["rolling", "block_ar"], seconds=10,
                      prompts=["..."])

Per (sampler, prompt) it runs two streams with the same seed:
  1. a timed one (`throughput.measure_stream`: sampling + streaming decode only, nothing written),
     for the first `run.evaluate.timed_prompts` prompts only when that is > 0 (throughput is the
     model's, not the prompt's; the others' runs hold `"throughput": null`),
  2. one whose frames go to OUT/videos/<sampler>_<i>.mp4 and to every `frame_sinks` callback
     (the drift metrics), so writing and scoring never inflate the throughput numbers.
Writes OUT/metrics.json and returns it; `flat_metrics` turns it into MLflow scalars. `drift_sinks`
gives the drift metrics (quality drift, consistency, flicker, colour, Fréchet; evaluation/drift.py);
`world_sinks` the world ground-truth checks, whose pass rates over chunks and prompts
(`world_checks.chunk_pass_rates`: `world_chunk_pass_rate`, per chunk, first / last third) join each
sampler's summary. Every sampler also gets a frame strip, OUT/plots/strip_<sampler>.png (`strips`).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from pipeline.generator import PromptSchedule, StreamingGenerator
from pipeline.video_io import Mp4Writer

from .plots import chunk_series, world_series
from .strips import StripCollector, write_strip
from .throughput import machine_info, measure_stream
from .world_checks import chunk_pass_rates

MB = 1024 * 1024
# Per-stream frame consumers: make(sampler, prompt_index) -> (add(frames [n, H, W, 3] uint8), finish() -> dict)
FrameSinkFactory = Callable[[str, int], tuple[Callable[[np.ndarray], None], Callable[[], dict]]]


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else float("nan")


def evaluate(cfg, checkpoint: str | Path | None, out_dir: str | Path, samplers: list[str], seconds: float,
             prompts: list[str], frame_sinks: dict[str, FrameSinkFactory] | None = None,
             on_stream: Callable[[str, int, int], None] | None = None) -> dict:
    """Evaluate `checkpoint` (None: the config's weights); see the module docstring."""
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    gen = StreamingGenerator(cfg, checkpoint=checkpoint)
    num_blocks = gen.blocks_for_seconds(seconds)
    video_frames = cfg.codec.video_frames(num_blocks * cfg.stream.frames_per_block)
    timed_prompts = cfg.run.evaluate.timed_prompts or len(prompts)
    result: dict = {"checkpoint": str(checkpoint) if checkpoint else None, "seconds": seconds, "prompts": prompts,
                    "machine": machine_info(), "samplers": {}}
    total, done = len(samplers) * len(prompts), 0
    for sampler in samplers:
        runs, strips = [], []
        for i, prompt in enumerate(prompts):
            timing = measure_stream(gen, prompt, seconds, sampler) if i < timed_prompts else None
            sinks = {name: make(sampler, i) for name, make in (frame_sinks or {}).items()}
            strips.append(StripCollector(video_frames, cfg.video.fps))
            video = out / "videos" / f"{sampler}_{i}.mp4"
            with Mp4Writer(video, cfg.video.fps, cfg.video.width, cfg.video.height) as writer:
                for frames in gen.stream_video(PromptSchedule.single(prompt), num_blocks, sampler):
                    writer.write(frames)
                    strips[-1].add(frames)
                    for add, _ in sinks.values():
                        add(frames)
            runs.append({"prompt": prompt, "video": str(video.relative_to(out)), "throughput": timing,
                         **{name: finish() for name, (_, finish) in sinks.items()}})
            done += 1
            if on_stream is not None:
                on_stream(sampler, done, total)
        timed = [r["throughput"] for r in runs if r["throughput"] is not None]
        result["samplers"][sampler] = {
            "runs": runs,
            "fps": _mean(t["fps"] for t in timed),
            "first_frame_latency_s": _mean(t["first_frame_latency_s"] for t in timed),
            "peak_rss_mb": max(t["peak_rss_bytes"] for t in timed) / MB,
            "kv_cache_mb": max(t["kv_cache_bytes"] for t in timed) / MB,
            "timed_prompts": len(timed),
        }
        worlds = [r["world"] for r in runs if isinstance(r.get("world"), dict)]
        if worlds:
            result["samplers"][sampler].update(chunk_pass_rates(worlds))
        strip = write_strip(strips, prompts, out / "plots" / f"strip_{sampler}.png",
                            f"{sampler}: frames over the stream")
        result["samplers"][sampler]["strip"] = strip.relative_to(out).as_posix()
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


def drift_sinks(fps: float, chunk_seconds: float, seconds: float, sample_every: int = 1) -> dict[str, FrameSinkFactory]:
    """{"drift": factory}: per stream, a `DriftAccumulator` with BRISQUE quality and EfficientNet-Lite0
    features (both loaded once and shared). The first/last spans are the paper's 5 s, or half the
    stream when it is shorter than 10 s."""
    from .drift import DriftAccumulator
    from .features import Lite0Features
    from .quality import BrisqueScorer

    quality, features = BrisqueScorer(), Lite0Features(num_threads=1)
    window = min(5.0, seconds / 2)

    def make(_sampler: str, _index: int):
        acc = DriftAccumulator(fps, chunk_seconds, quality=quality, features=features, window_s=window,
                               sample_every=sample_every)
        return acc.add, acc.summary

    return {"drift": make}


def world_sinks(truths: list[dict], chunk_seconds: float, fps: float) -> FrameSinkFactory:
    """Per stream of prompt i, a `WorldChecker` against `truths[i]` (the world whose caption it is)."""
    from .world_checks import WorldChecker

    def make(_sampler: str, index: int):
        checker = WorldChecker(truths[index], chunk_seconds, fps=fps)
        return checker.add, checker.summary

    return make


def drift_scalars(drift: dict) -> dict[str, float | None]:
    """The headline numbers of one stream's drift summary (None where undefined). The first/last
    window numbers miss a change in between (a background that flips at 2 s and stays); the
    worst similarity to the first chunk and the largest brightness deviation from it catch it."""
    q, c, f = drift.get("quality") or {}, drift.get("consistency") or {}, drift.get("frechet") or {}
    luma = ((drift.get("colour") or {}).get("max_abs_deviation_from_first_chunk") or {}).get("luma_mean")
    return {"quality_drift": q.get("delta_drift"), "similarity_last_to_first": c.get("last_to_first"),
            "similarity_min_to_first": c.get("min_to_first"), "luma_max_deviation": luma,
            "frechet_first_last": f.get("distance"), "flicker": (drift.get("flicker") or {}).get("score")}


def chunk_curves(result: dict) -> dict[int, dict[str, float]]:
    """Per chunk index k: {'<sampler>/chunk_<metric>': mean over prompts} for MLflow curves with
    step = k (quality, similarity to the first chunk, flicker and, with world checks, world pass rate)."""
    curves: dict[int, dict[str, float]] = {}
    for sampler in result["samplers"]:
        series = {f"chunk_{key}": chunk_series(result, sampler, lambda c, k=key: c.get(k))
                  for key in ("quality", "similarity_to_first", "flicker")}
        series["chunk_world_pass_rate"] = world_series(result, sampler)
        for name, (_, values) in series.items():
            for k, v in enumerate(values):
                if np.isfinite(v):
                    curves.setdefault(k, {})[f"{sampler}/{name}"] = float(v)
    return curves


def flat_metrics(result: dict) -> dict[str, float]:
    """{'rolling/fps': ..., 'rolling/quality_drift': ..., ...}: the per-sampler scalars (means over prompts)."""
    flat: dict[str, float] = {}
    for sampler, summary in result["samplers"].items():
        for key, value in summary.items():
            if isinstance(value, int | float):
                flat[f"{sampler}/{key}"] = float(value)
        for kind, rate in (summary.get("world_check_failure_rates") or {}).items():
            if rate is not None:  # e.g. rolling/world_motion_failure_rate
                flat[f"{sampler}/world_{kind}_failure_rate"] = float(rate)
        drifts = [drift_scalars(r["drift"]) for r in summary["runs"] if r.get("drift")]
        for key in (drifts[0] if drifts else {}):
            values = [d[key] for d in drifts if d[key] is not None]
            if values:
                flat[f"{sampler}/{key}"] = _mean(values)
    return flat
