"""The evaluation report: OUT/report.md and OUT/report.html from an `evaluate` result.

    paths = write_report(result, out_dir)    # {"md": ..., "html": ..., "plots": {name: png}}

Both files hold the same content: the settings (checkpoint, length, chunking, machine), a summary
table per sampler, the plots (`evaluation.plots`, in OUT/plots) and the sample videos. The HTML is
self-contained (inline CSS, no scripts or remote resources); it refers to the PNGs and to the videos
by paths relative to OUT, so the folder can be moved, zipped or logged as MLflow artifacts as one
unit. The videos sit side by side: one row per prompt, one column per sampler.

Summary columns (per sampler, the mean over prompts; `flat_metrics` gives the same numbers to MLflow):
  fps, first-frame latency   from the timed stream (sampling + streaming decode, nothing written)
  peak RSS                   the process's peak resident memory while evaluating
  quality DeltaDrift         |Q(first W s) - Q(last W s)|, the Rolling Forcing paper's drift (lower is better)
  similarity last->first     feature cosine of the last chunk to the first (1 = no content drift)
  Frechet first<->last       Frechet distance of first vs last span features (lower is better)
  flicker                    VBench temporal flickering over the whole stream (1 = static)
World-checks columns (ground-truth objects kept, `evaluation.world_checks`) appear when runs carry
a `world` summary: streams passing in every chunk, the share of chunks passing (all prompts), and
that share in the first and last third of the stream, and which checks the failing chunks failed
(share of chunks per kind: count, size, colour, motion, spurious). Each sampler's frame strip (evaluate's
plots/strip_<sampler>.png) is shown under "Frames over time". Undefined values print as n/a.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from urllib.parse import quote

from .evaluate import flat_metrics
from .plots import quality_label, write_plots

# (flat_metrics key suffix, column header, format)
COLUMNS = [
    ("fps", "fps", "{:.2f}"),
    ("first_frame_latency_s", "first-frame latency (s)", "{:.3f}"),
    ("peak_rss_mb", "peak RSS (MB)", "{:.0f}"),
    ("quality_drift", "quality ΔDrift ↓", "{:.3f}"),
    ("similarity_last_to_first", "similarity last→first ↑", "{:.3f}"),
    ("similarity_min_to_first", "worst similarity to first ↑", "{:.3f}"),
    ("luma_max_deviation", "max brightness change ↓", "{:.1f}"),
    ("frechet_first_last", "Fréchet first↔last ↓", "{:.2f}"),
    ("flicker", "flicker (1 = static)", "{:.4f}"),
]
PLOT_TITLES = {
    "quality": "Quality per chunk",
    "similarity_to_first": "Similarity to the first chunk",
    "flicker": "Flicker per chunk",
    "colour": "Brightness and saturation per chunk",
    "similarity_vs_dt": "Similarity vs time gap",
    "throughput": "Throughput and first-frame latency",
    "world_pass_rate": "World checks passed per chunk",
}
# (summary key, column header) of the world checks, rates as percentages
WORLD_COLUMNS = [("world_chunk_pass_rate", "world chunks passed ↑"),
                 ("world_pass_rate_first_third", "first third ↑"),
                 ("world_pass_rate_last_third", "last third ↑")]
LEGEND = ("ΔDrift = |Q(first W s) − Q(last W s)| (the Rolling Forcing paper's quality drift); ↓ lower is better, "
          "↑ higher is better. fps and first-frame latency come from a separate timed stream in which nothing is "
          "written or scored. Peak RSS is the process's peak so far, so a sampler evaluated later also carries "
          "the peaks of those before it.")
CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #eee}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:1em}
video{width:320px;max-width:100%;image-rendering:pixelated;background:#000}figure{margin:0}figcaption{color:#555}
code{background:#f3f3f3;padding:0 .2em}"""


def fmt(value, spec: str = "{:.3g}") -> str:
    """A number with `spec`, or 'n/a' when undefined (None, NaN, inf, not a number)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return spec.format(v) if math.isfinite(v) else "n/a"


def _chunk_seconds(result: dict) -> float | None:
    for summary in result["samplers"].values():
        for run in summary.get("runs", []):
            if run.get("drift"):
                return run["drift"].get("chunk_seconds")
    return None


def _quality_name(result: dict) -> str | None:
    for summary in result["samplers"].values():
        for run in summary.get("runs", []):
            q = (run.get("drift") or {}).get("quality")
            if q:
                return q.get("name")
    return None


def _world_cell(summary: dict) -> str | None:
    """'k/n passed' over the runs with a world-checks summary, None when no run has one."""
    checked = [r["world"] for r in summary.get("runs", []) if isinstance(r.get("world"), dict)]
    return f"{sum(bool(w.get('passed')) for w in checked)}/{len(checked)} passed" if checked else None


def _failure_cell(summary: dict) -> str:
    """Why chunks failed: 'motion 36 %, size 27 %' (kinds by share of chunks, largest first), or 'none'."""
    rates = {k: v for k, v in (summary.get("world_check_failure_rates") or {}).items() if v}
    return ", ".join(f"{k} {100 * v:.0f} %" for k, v in sorted(rates.items(), key=lambda kv: -kv[1])) or "none"


def summary_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """(headers, one row of formatted cells per sampler)."""
    flat = flat_metrics(result)
    world = {s: _world_cell(summary) for s, summary in result["samplers"].items()}
    with_world = any(world.values())
    headers = ["sampler"] + [h for _, h, _ in COLUMNS]
    if with_world:
        headers += ["world streams passed"] + [h for _, h in WORLD_COLUMNS] + ["chunks failing"]
    rows = []
    for sampler, summary in result["samplers"].items():
        row = [sampler] + [fmt(flat.get(f"{sampler}/{key}"), spec) for key, _, spec in COLUMNS]
        if with_world:
            row += ([world[sampler] or "n/a"] + [fmt(_pct(summary.get(key)), "{:.0f} %") for key, _ in WORLD_COLUMNS]
                    + [_failure_cell(summary)])
        rows.append(row)
    return headers, rows


def _pct(rate) -> float | None:
    return None if rate is None else 100.0 * float(rate)


def strips(result: dict) -> list[tuple[str, str]]:
    """(sampler, relative PNG path) of every sampler with a frame strip."""
    return [(s, summary["strip"]) for s, summary in result["samplers"].items() if summary.get("strip")]


def settings(result: dict) -> list[tuple[str, str]]:
    """(label, value) lines describing what was evaluated and where."""
    m = result.get("machine") or {}
    where = ", ".join(x for x in (
        m.get("gpu") or m.get("platform"),
        f"{m['cpu_count']} CPUs" if m.get("cpu_count") else None,
        f"{m['torch_threads']} torch threads" if m.get("torch_threads") else None,
        f"torch {m['torch']}" if m.get("torch") else None) if x)
    chunk = _chunk_seconds(result)
    quality = quality_label(result) if _quality_name(result) else None
    return [
        ("checkpoint", result.get("checkpoint") or "none (config weights, or random seeded weights)"),
        ("samplers", ", ".join(result["samplers"])),
        ("video per stream", f"{fmt(result.get('seconds'), '{:g}')} s"),
        ("prompts", str(len(result.get("prompts") or []))),
        ("chunks", f"{fmt(chunk, '{:g}')} s" if chunk else "n/a (no drift metrics)"),
        ("quality metric", quality or "n/a"),
        ("machine", where or "n/a"),
    ]


def _video_of(result: dict, sampler: str, i: int) -> str | None:
    runs = result["samplers"][sampler].get("runs", [])
    return runs[i].get("video") if i < len(runs) else None


# ------------------------------------------------------------------------------------ markdown


def _md_cell(text: str) -> str:
    """Table-safe text: a raw | would split the row, and raw <tags> would render as HTML."""
    return (str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
            .replace("<", "&lt;").replace(">", "&gt;"))


def _md_table(headers: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """The first `left` columns are left-aligned (names, prompts), numbers right-aligned."""
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
             "| " + " | ".join(["---"] * left + ["---:"] * (len(headers) - left)) + " |"]
    return lines + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]


def render_markdown(result: dict, plots: dict[str, str]) -> str:
    headers, rows = summary_rows(result)
    out = ["# rollforge evaluation", ""]
    out += [f"- **{label}**: {_md_cell(value)}" for label, value in settings(result)]
    out += ["", "## Summary (mean over prompts)", "", *_md_table(headers, rows), "",
            LEGEND, "",
            "## Plots", ""]
    out += [f"![{PLOT_TITLES.get(name, name)}]({quote(rel)})" + "\n" for name, rel in plots.items()]
    if strips(result):
        out += ["## Frames over time", ""]
        out += [f"![{_md_cell(s)}: frames over the stream]({quote(rel)})" + "\n" for s, rel in strips(result)]
    out += ["## Samples", ""]
    samplers = list(result["samplers"])
    out += _md_table(["#", "prompt", *samplers], [], left=len(samplers) + 2)
    for i, prompt in enumerate(result.get("prompts") or []):
        # prompts are escaped; link cells are built verbatim (escaping would break the link syntax)
        links = [f"[{s}]({quote(v)})" if (v := _video_of(result, s, i)) else "n/a" for s in samplers]
        out.append("| " + " | ".join([str(i), _md_cell(prompt), *links]) + " |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------- html


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _html_table(headers: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Cells are escaped here; the first `left` columns are left-aligned (names, prompts)."""
    def cls(i: int) -> str:
        return ' class="l"' if i < left else ""
    head = "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{_e(c)}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(result: dict, plots: dict[str, str]) -> str:
    headers, rows = summary_rows(result)
    samplers = list(result["samplers"])
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>rollforge evaluation</title>", f"<style>{CSS}</style></head><body>",
             "<h1>rollforge evaluation</h1>",
             "<table>" + "".join(f'<tr><th class="l">{_e(k)}</th><td class="l">{_e(v)}</td></tr>'
                                 for k, v in settings(result)) + "</table>",
             "<h2>Summary (mean over prompts)</h2>", _html_table(headers, rows),
             f"<p>{_e(LEGEND)}</p>",
             '<h2>Plots</h2><div class="plots">']
    for name, rel in plots.items():
        title = PLOT_TITLES.get(name, name)
        parts.append(f'<figure><img src="{_e(quote(rel))}" alt="{_e(title)}"><figcaption>{_e(title)}'
                     "</figcaption></figure>")
    parts.append("</div>")
    if strips(result):
        parts.append("<h2>Frames over time</h2>")
        parts += [f'<figure><img src="{_e(quote(rel))}" alt="{_e(s)} frames"><figcaption>{_e(s)}: frames over '
                  "the stream</figcaption></figure>" for s, rel in strips(result)]
    parts.append("<h2>Samples</h2>")
    head = '<th class="l">#</th><th class="l">prompt</th>' + "".join(f"<th>{_e(s)}</th>" for s in samplers)
    body = []
    for i, prompt in enumerate(result.get("prompts") or []):
        cells = []
        for s in samplers:
            video = _video_of(result, s, i)
            cells.append(f'<td><video src="{_e(quote(video))}" controls loop muted playsinline preload="metadata">'
                         f'<a href="{_e(quote(video))}">{_e(video)}</a></video></td>' if video else "<td>n/a</td>")
        body.append(f'<tr><td class="l">{i}</td><td class="l">{_e(prompt)}</td>{"".join(cells)}</tr>')
    parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(result: dict, out_dir: str | Path) -> dict:
    """Write OUT/plots/*.png, OUT/report.md and OUT/report.html (paths in `result` are relative to OUT)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = write_plots(result, out / "plots")
    rel = {name: p.relative_to(out).as_posix() for name, p in pngs.items()}
    md, page = out / "report.md", out / "report.html"
    md.write_text(render_markdown(result, rel), encoding="utf-8")
    page.write_text(render_html(result, rel), encoding="utf-8")
    return {"md": md, "html": page, "plots": pngs}


__all__ = ["COLUMNS", "fmt", "render_html", "render_markdown", "summary_rows", "write_report"]
