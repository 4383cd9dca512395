"""Plots of an evaluation result (`evaluate.evaluate`'s dict / metrics.json): one PNG per metric.

    paths = write_plots(result, out_dir / "plots")     # {"quality": Path(".../quality.png"), ...}

Each per-chunk plot has time on the x axis: the chunk's mid-time (start_s + stop_s) / 2 in seconds
of video, so a partial last chunk sits at its own centre. There is one curve per sampler, the mean
over prompts of that chunk's value (runs of one sampler share the chunk grid: same length, same
fps). Undefined values (None / NaN, e.g. no features in a chunk) are skipped in the mean and leave
a gap in the curve; a metric that no run defines gives a plot that says so instead of failing.

| file                      | y axis                                                                 |
| ------------------------- | ---------------------------------------------------------------------- |
| quality.png               | no-reference quality per chunk (BRISQUE: lower is better)              |
| similarity_to_first.png   | feature cosine of each chunk's centroid to chunk 0's                   |
| flicker.png               | VBench flicker per chunk, (255 - mean |x_i - x_(i-1)|) / 255, 1 = static |
| colour.png                | mean luma (0..255) and mean HSV saturation (0..1) per chunk, two panels |
| similarity_vs_dt.png      | s(dt): mean cosine of chunk centroids dt seconds apart (x = dt, not t)  |
| throughput.png            | bars per sampler: fps and first-frame latency (s), two panels          |
| world_pass_rate.png       | share of prompts whose chunk passes every world check (only with world checks) |

matplotlib runs on the Agg canvas (no display, no pyplot global state), so this works headless and
from worker threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
# (file stem, title, y label, value of one chunk record); quality's label gets the scorer's name
CHUNK_METRICS: list[tuple[str, str, str, Callable[[dict], float | None]]] = [
    ("quality", "Quality per chunk", "quality", lambda c: c.get("quality")),
    ("similarity_to_first", "Similarity to the first chunk", "cosine to chunk 0",
     lambda c: c.get("similarity_to_first")),
    ("flicker", "Flicker per chunk (VBench, 1 = static)", "flicker score", lambda c: c.get("flicker")),
]
COLOUR_PANELS = [("luma_mean", "brightness (mean luma, 0-255)"), ("saturation_mean", "mean saturation (HSV, 0-1)")]


def _num(value) -> float:
    """float, with None and non-numbers as NaN (JSON has no NaN: evaluate writes undefined as None)."""
    try:
        return float(value) if value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _nanmean(values: list[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def drift_runs(result: dict, sampler: str) -> list[dict]:
    """The drift summaries of a sampler's runs (runs evaluated without drift sinks are left out)."""
    return [r["drift"] for r in result["samplers"][sampler].get("runs", []) if r.get("drift")]


def chunk_series(result: dict, sampler: str, value: Callable[[dict], float | None]) -> tuple[np.ndarray, np.ndarray]:
    """(mid-times [k], mean over prompts [k]) of a per-chunk value, aligned by chunk index."""
    times: dict[int, float] = {}
    values: dict[int, list[float]] = {}
    for drift in drift_runs(result, sampler):
        for c in drift.get("chunks") or []:
            k = int(c["index"])
            times.setdefault(k, (_num(c.get("start_s")) + _num(c.get("stop_s"))) / 2)
            values.setdefault(k, []).append(_num(value(c)))
    ks = sorted(times)
    return np.array([times[k] for k in ks], dtype=np.float64), np.array([_nanmean(values[k]) for k in ks])


def lag_series(result: dict, sampler: str) -> tuple[np.ndarray, np.ndarray]:
    """(dt [d], mean over prompts of s(dt) [d]) from the runs' consistency.similarity_vs_dt."""
    values: dict[float, list[float]] = {}
    for drift in drift_runs(result, sampler):
        for row in (drift.get("consistency") or {}).get("similarity_vs_dt") or []:
            values.setdefault(round(_num(row.get("dt_s")), 9), []).append(_num(row.get("similarity")))
    dts = sorted(d for d in values if math.isfinite(d))
    return np.array(dts, dtype=np.float64), np.array([_nanmean(values[d]) for d in dts])


def quality_label(result: dict) -> str:
    """'brisque (lower is better)' from the first run that scored quality, else 'quality'."""
    for sampler in result["samplers"]:
        for drift in drift_runs(result, sampler):
            q = drift.get("quality")
            if q:
                better = {True: "higher", False: "lower"}.get(q.get("higher_is_better"))
                return f"{q.get('name', 'quality')}" + (f" ({better} is better)" if better else "")
    return "quality"


# ------------------------------------------------------------------------------------ drawing


def _figure(panels: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(6.4 * panels if panels > 1 else 7.0, 4.0), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg explicitly: never a GUI backend
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def _curves(ax, series: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str, ylabel: str) -> None:
    """One line per sampler, colour C<i> by the sampler's position (the same colour in every plot);
    markers so a single-chunk stream still shows its point; a sampler without data stays in the legend."""
    drawn = False
    for i, (sampler, (x, y)) in enumerate(series.items()):
        if x.size and np.isfinite(y).any():
            ax.plot(x, y, marker="o", markersize=4 if x.size < 40 else 0, linewidth=1.5, label=sampler, color=f"C{i}")
            drawn = True
        else:
            ax.plot([], [], marker="o", color=f"C{i}", label=f"{sampler} (no data)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if drawn:
        ax.legend(loc="best", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def plot_chunk_metric(result: dict, path: Path, title: str, ylabel: str,
                      value: Callable[[dict], float | None]) -> Path:
    fig, (ax,) = _figure()
    _curves(ax, {s: chunk_series(result, s, value) for s in result["samplers"]}, "time (s, chunk mid-time)", ylabel)
    ax.set_title(title)
    return _save(fig, path)


def plot_colour(result: dict, path: Path) -> Path:
    fig, axes = _figure(len(COLOUR_PANELS))
    for ax, (stat, label) in zip(axes, COLOUR_PANELS):
        series = {s: chunk_series(result, s, lambda c, k=stat: (c.get("colour") or {}).get(k))
                  for s in result["samplers"]}
        _curves(ax, series, "time (s, chunk mid-time)", label)
        ax.set_title(label.split(" (")[0].capitalize() + " per chunk")
    return _save(fig, path)


def plot_similarity_vs_dt(result: dict, path: Path) -> Path:
    fig, (ax,) = _figure()
    _curves(ax, {s: lag_series(result, s) for s in result["samplers"]}, "gap between chunks dt (s)",
            "mean cosine of chunk centroids")
    ax.set_title("Feature similarity vs time gap")
    return _save(fig, path)


def plot_throughput(result: dict, path: Path) -> Path:
    """Bars per sampler: mean fps over prompts and mean first-frame latency (undefined -> no bar)."""
    samplers = list(result["samplers"])
    fig, axes = _figure(2)
    for ax, key, label in ((axes[0], "fps", "video frames / s"), (axes[1], "first_frame_latency_s", "seconds")):
        values = [_num(result["samplers"][s].get(key)) for s in samplers]
        x = np.arange(len(samplers))
        finite = [v if math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(x, finite, color=[f"C{i}" for i in range(len(samplers))])
        for bar, v in zip(bars, values):
            ax.annotate("n/a" if not math.isfinite(v) else f"{v:.3g}", (bar.get_x() + bar.get_width() / 2,
                        bar.get_height()), ha="center", va="bottom", fontsize="small")
        ax.set_xticks(x, samplers)
        ax.set_ylabel(label)
        ax.set_title("Throughput (fps)" if key == "fps" else "First-frame latency")
        ax.margins(y=0.15)  # room for the value labels
    return _save(fig, path)


def world_series(result: dict, sampler: str) -> tuple[np.ndarray, np.ndarray]:
    """(chunk mid-times [k], world pass rate over prompts [k]) from the sampler's summary."""
    summary = result["samplers"][sampler]
    return (np.array(summary.get("world_chunk_times_s") or [], dtype=np.float64),
            np.array([_num(v) for v in summary.get("world_chunk_pass_rate_by_chunk") or []], dtype=np.float64))


def plot_world_pass_rate(result: dict, path: Path) -> Path:
    fig, (ax,) = _figure()
    _curves(ax, {s: world_series(result, s) for s in result["samplers"]}, "time (s, chunk mid-time)",
            "share of prompts passing")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("World checks passed per chunk (count, colour, size, motion)")
    return _save(fig, path)


def write_plots(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write every plot of the module docstring's table into `out_dir`; returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    qlabel = quality_label(result)
    for name, title, ylabel, value in CHUNK_METRICS:
        paths[name] = plot_chunk_metric(result, out / f"{name}.png", title,
                                        qlabel if name == "quality" else ylabel, value)
    paths["colour"] = plot_colour(result, out / "colour.png")
    paths["similarity_vs_dt"] = plot_similarity_vs_dt(result, out / "similarity_vs_dt.png")
    paths["throughput"] = plot_throughput(result, out / "throughput.png")
    if any(summary.get("world_chunk_pass_rate_by_chunk") for summary in result["samplers"].values()):
        paths["world_pass_rate"] = plot_world_pass_rate(result, out / "world_pass_rate.png")
    return paths


__all__ = ["chunk_series", "drift_runs", "lag_series", "quality_label", "world_series", "write_plots"]
