"""`rollforge eval`: stream prompts with each sampler from a checkpoint, score drift and throughput, write a report.

What the `evaluate` stage of `rollforge run` does, as its own command with its own output folder:
OUT/metrics.json, OUT/videos/, OUT/plots/*.png, OUT/report.md, OUT/report.html, the resolved config,
and (tracking.enabled) a fresh MLflow run named "eval" in OUT/mlflow.db (or tracking.uri).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import yaml

from evaluation.chunks import ChunkGrid
from pipeline.config import ConfigError

from .cli_types import positive_float, positive_int
from .config import load_config, save_resolved
from .logs import route_library_logs
from .run_config import EVAL_SAMPLERS
from .schema import Config

EPILOG = ("Defaults come from the config's run.evaluate section (samplers, seconds, prompts, chunk_seconds). "
          "Overrides: any config key as key.sub=value, e.g. runtime.device=cuda tracking.enabled=false "
          "'run.evaluate.prompts=[a red ball, a blue cube]'")


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a .yaml/.yml/.json list of strings, or any other file as text, one per line
    (blank lines and lines starting with # are skipped)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--prompts {p}: no such file")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() in (".yaml", ".yml", ".json"):
        data = yaml.safe_load(text)  # YAML is a superset of JSON
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise ValueError(f"--prompts {p}: expected a list of prompt strings")
        prompts = [x.strip() for x in data]
    else:
        prompts = [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")]
    prompts = [x for x in prompts if x]
    if not prompts:
        raise ValueError(f"--prompts {p}: no prompts in the file")
    return prompts


def teacher_max_seconds(cfg: Config) -> float:
    """The longest stream the bidirectional teacher covers: its context of stream.context_frames
    latent frames, decoded."""
    return cfg.codec.video_frames(cfg.stream.context_frames) / cfg.video.fps


def check_teacher_length(cfg: Config, samplers: list[str], seconds: float) -> None:
    """The `bidirectional` sampler is the teacher, trained on clips of its context length: it samples
    one clip with full attention, so a longer clip is out of its training distribution (and quadratic
    in length). Refuse those lengths rather than report drift numbers of an unfair baseline. Same
    frame arithmetic as StreamingGenerator.blocks_for_seconds: a stream of s seconds needs
    ceil(s fps) frames, which fit when the context decodes to at least that many."""
    if "bidirectional" not in samplers:
        return
    frames = max(1, math.ceil(seconds * cfg.video.fps))
    if frames > cfg.codec.video_frames(cfg.stream.context_frames):
        limit = teacher_max_seconds(cfg)
        raise ConfigError(
            f"--seconds {seconds:g}: the bidirectional sampler is the teacher, which samples one clip of its "
            f"context (stream.context_frames={cfg.stream.context_frames} latent frames = {limit:g} s at "
            f"{cfg.video.fps} fps) and is not extended beyond it; evaluate it with --seconds <= {limit:g}, or drop "
            f"it from --samplers for longer streams")


def read_world_truths(folder: str, count: int) -> list[dict]:
    """The first `count` ground-truth records (NAME.gt.json, from `rollforge data demo`) in `folder`."""
    files = sorted(Path(folder).rglob("*.gt.json"))[:count]
    if not files:
        raise FileNotFoundError(f"--world {folder}: no *.gt.json ground truth (write some with `rollforge data demo`)")
    return [json.loads(f.read_text()) for f in files]


def eval_config(args: argparse.Namespace) -> Config:
    """The config with the command's flags written into run.evaluate (so the resolved config and the
    MLflow params record what was evaluated), validated."""
    cfg = load_config(Config, args.config, args.overrides)
    e = cfg.run.evaluate
    if args.samplers:
        e.samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
        bad = [s for s in e.samplers if s not in EVAL_SAMPLERS]
        if bad or not e.samplers:
            raise ConfigError(f"--samplers: unknown sampler {bad[0]!r}; valid: {', '.join(EVAL_SAMPLERS)}" if bad
                              else f"--samplers: give one or more of {', '.join(EVAL_SAMPLERS)}")
    if args.seconds is not None:
        e.seconds = args.seconds
    if args.chunk_seconds is not None:
        e.chunk_seconds = args.chunk_seconds
    if args.prompts and args.world:
        raise ConfigError("--prompts and --world: give one (--world takes the prompts from the worlds' captions)")
    if args.prompts:
        e.prompts = read_prompts(args.prompts)
    args.world_truths = []
    if args.world:
        args.world_truths = read_world_truths(args.world, args.world_count)
        e.prompts = [t["caption"] for t in args.world_truths]
    cfg.validate()
    try:  # the drift metrics' own chunk rule (exact fractions), checked now rather than after a stream
        ChunkGrid.of(cfg.video.fps, e.chunk_seconds)
    except ValueError as err:
        raise ConfigError(f"--chunk-seconds {e.chunk_seconds:g}: {err}") from None
    check_teacher_length(cfg, e.samplers, e.seconds)
    return cfg


def world_headline(flat: dict[str, float], sampler: str) -> str:
    """'83 % of chunks pass (first third 88 %, last third 79 %)' from flat_metrics."""
    def pct(key: str) -> str:
        v = flat.get(f"{sampler}/{key}")
        return "n/a" if v is None else f"{100 * v:.0f} %"
    return (f"{pct('world_chunk_pass_rate')} of chunks pass (first third {pct('world_pass_rate_first_third')}, "
            f"last third {pct('world_pass_rate_last_third')})")


def cmd_eval(args: argparse.Namespace) -> int:
    cfg = eval_config(args)  # every check before the models load
    from evaluation.evaluate import chunk_curves, drift_sinks, evaluate, flat_metrics, world_sinks
    from evaluation.report import COLUMNS, fmt, write_report

    from .tracking import RUN_ID_FILE, Tracker, store_uri, ui_command

    e = cfg.run.evaluate
    out = Path(args.out).resolve()
    route_library_logs(out)
    checkpoint = args.checkpoint
    if checkpoint and not Path(checkpoint).is_dir():
        raise FileNotFoundError(f"--checkpoint {checkpoint}: no such directory (expected model.safetensors "
                                f"[+ config.json], e.g. from rollforge export)")
    if not checkpoint and not cfg.model.weights:
        print("rollforge: warning: no --checkpoint and no model.weights: the weights are random (seeded); the "
              "numbers measure the streaming machinery, not a trained model", file=sys.stderr)
    save_resolved(cfg, out)
    # Each `rollforge eval` is its own MLflow run: a run id left in OUT by an earlier evaluation would
    # otherwise be resumed and mix two evaluations' metrics.
    (out / RUN_ID_FILE).unlink(missing_ok=True)
    with Tracker(cfg.tracking, out, run_name="eval", tags={"rollforge.command": "eval"}) as tracker:
        tracker.log_params(cfg)
        tracker.log_params({"eval.checkpoint": str(checkpoint) if checkpoint else "none",
                            "eval.num_prompts": len(e.prompts)})
        sinks = drift_sinks(cfg.video.fps, e.chunk_seconds, e.seconds, e.drift_sample_every)
        if args.world_truths:
            sinks["world"] = world_sinks(args.world_truths, e.chunk_seconds, cfg.video.fps)
        print(f"evaluating {', '.join(e.samplers)} on {len(e.prompts)} prompt(s), {e.seconds:g} s each",
              file=sys.stderr)
        result = evaluate(cfg, checkpoint, out, e.samplers, e.seconds, e.prompts, frame_sinks=sinks,
                          on_stream=lambda s, done, total: print(f"  streamed {done}/{total} ({s})", file=sys.stderr))
        report = write_report(result, out)
        tracker.log_metrics(flat_metrics(result), step=0)
        for k, metrics in chunk_curves(result).items():  # curves (mean over prompts), step = chunk index
            tracker.log_metrics(metrics, step=k)
        for name in ("report.html", "report.md", "metrics.json"):
            tracker.log_artifact(out / name)
        tracker.log_artifacts(out / "plots", "plots")
        tracker.log_artifacts(out / "videos", "videos")  # so the logged report.html plays its videos
        run_id = tracker.run_id

    flat = flat_metrics(result)
    for sampler in result["samplers"]:
        print(f"{sampler:>14}: " + ", ".join(f"{header} {fmt(flat.get(f'{sampler}/{key}'), spec)}"
                                              for key, header, spec in COLUMNS))
        if f"{sampler}/world_chunk_pass_rate" in flat:
            print(f"{'':>14}  world checks: {world_headline(flat, sampler)}")
    print(f"report:   {report['html']} (markdown: {report['md']})")
    print(f"metrics:  {out / 'metrics.json'} (videos in {out / 'videos'}, plots in {out / 'plots'})")
    if run_id:
        print(f"MLflow:   run {run_id}: {ui_command(store_uri(cfg.tracking, out))}")
    return 0


def register(sub: argparse._SubParsersAction, add_config_args) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: drift + throughput per sampler, report with plots and "
                       "videos", epilog=EPILOG,
                       description="Stream each prompt with each sampler from --checkpoint, once timed (fps, "
                       "first-frame latency, memory) and once written to OUT/videos and scored per chunk (quality "
                       "drift, similarity to the first chunk, flicker, colour, Fréchet first vs last). Writes "
                       "OUT/metrics.json, OUT/plots/*.png, OUT/report.md and OUT/report.html, and logs an MLflow "
                       "run named 'eval' when tracking.enabled. The bidirectional teacher covers only its context "
                       "length (one clip), so it needs --seconds within it.")
    add_config_args(p)
    p.add_argument("--checkpoint", metavar="DIR",
                   help="exported checkpoint dir (model.safetensors [+ config.json]); default: random seeded weights")
    p.add_argument("--samplers", metavar="A,B,...",
                   help=f"comma-separated, from {', '.join(EVAL_SAMPLERS)} (default: run.evaluate.samplers)")
    p.add_argument("--seconds", type=positive_float, metavar="S", help="video per prompt and sampler (default: run.evaluate.seconds)")
    p.add_argument("--prompts", metavar="FILE",
                   help=".txt (one per line) or YAML/JSON list of prompts (default: run.evaluate.prompts)")
    p.add_argument("--chunk-seconds", type=positive_float, metavar="C",
                   help="drift metrics per chunk of C seconds (default: run.evaluate.chunk_seconds)")
    p.add_argument("--world", metavar="DIR", help="procedural worlds (NAME.gt.json): their captions are the "
                   "prompts and each stream is checked against its world's ground truth (objects keep colour, "
                   "size and count)")
    p.add_argument("--world-count", type=positive_int, default=3, metavar="N", help="worlds taken from --world (default 3)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=cmd_eval)
