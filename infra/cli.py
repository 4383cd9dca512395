"""`rollforge` command line: one subcommand per stage, each with --config FILE and key.sub=value overrides."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pipeline.config import SAMPLER_KINDS, ConfigError

from . import cli_data, cli_eval, cli_run, cli_train
from .cli_types import positive_float
from .config import dump_yaml, load_config, save_resolved
from .launch import report_error
from .schema import Config

EPILOG = "Overrides: any config key as key.sub=value, e.g. stream.sink_blocks=2 runtime.device=cuda"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (defaults: the tiny CPU setup)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides applied after --config")


def load(args: argparse.Namespace) -> Config:
    return load_config(Config, args.config, args.overrides)


def _progress(transient: bool = False):
    """Frames done / total with live fps, drawn on stderr (stdout stays clean for JSON)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("frames"), TextColumn("{task.fields[fps]:.1f} fps"), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=transient)


# ----------------------------------------------------------------------------- generate
def cmd_generate(args: argparse.Namespace) -> int:
    from pipeline.generator import PromptSchedule, StreamingGenerator
    from pipeline.video_io import Mp4Writer

    cfg = load(args)
    if args.sampler:
        cfg.sampler.kind = args.sampler
        cfg.validate()
    if args.prompt_schedule:
        schedule = PromptSchedule.from_file(args.prompt_schedule)
    elif args.prompt:
        schedule = PromptSchedule.single(args.prompt)
    else:
        raise ConfigError("--prompt: give a prompt or --prompt-schedule FILE")
    out = Path(args.out)
    gen = StreamingGenerator(cfg, checkpoint=args.checkpoint)
    num_blocks = gen.blocks_for_seconds(args.seconds)
    total = gen.codec.video_frames(num_blocks * cfg.stream.frames_per_block)
    save_resolved(cfg, out.parent, f"{out.stem}.config.yaml")
    start = time.perf_counter()
    with Mp4Writer(out, cfg.video.fps, cfg.video.width, cfg.video.height) as writer, _progress() as bar:
        task = bar.add_task(f"{cfg.sampler.kind}", total=total, fps=0.0)
        for frames in gen.stream_video(schedule, num_blocks, cfg.sampler.kind):
            writer.write(frames)
            bar.update(task, advance=len(frames), fps=writer.frames_written / (time.perf_counter() - start))
    wall = time.perf_counter() - start
    print(f"wrote {out} ({writer.frames_written} frames, {writer.frames_written / cfg.video.fps:.1f} s of video, "
          f"{writer.frames_written / wall:.1f} fps)")
    return 0


# ----------------------------------------------------------------------------- bench
def cmd_bench_stream(args: argparse.Namespace) -> int:
    from evaluation.throughput import machine_info, measure_stream
    from pipeline.generator import StreamingGenerator

    cfg = load(args)
    if args.sampler:
        cfg.sampler.kind = args.sampler
        cfg.validate()
    gen = StreamingGenerator(cfg, checkpoint=args.checkpoint)
    total = gen.codec.video_frames(gen.blocks_for_seconds(args.seconds) * cfg.stream.frames_per_block)
    with _progress(transient=True) as bar:
        task = bar.add_task(f"bench {cfg.sampler.kind}{' (recompute)' if args.recompute else ''}", total=total, fps=0.0)
        start = time.perf_counter()

        def advance(n: int) -> None:
            done = bar.tasks[0].completed + n
            bar.update(task, completed=done, fps=done / max(time.perf_counter() - start, 1e-9))

        result = measure_stream(gen, args.prompt, args.seconds, cfg.sampler.kind, recompute=args.recompute,
                                on_frames=advance)
    result["machine"] = machine_info()
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(dump_yaml(load(args)), end="")
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rollforge",
        description="Rolling Forcing distillation of video diffusion models into real-time streaming generators.",
        epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    g = sub.add_parser("generate", help="stream a video to an mp4 as blocks finish", epilog=EPILOG,
                       description="Generate a video block by block and write each block to the mp4 as soon as "
                                   "it is final. Without --checkpoint the weights are random (seeded).")
    _add_config_args(g)
    g.add_argument("--checkpoint", metavar="DIR", help="exported checkpoint dir (model.safetensors [+ config.json])")
    g.add_argument("--prompt", help="text prompt")
    g.add_argument("--prompt-schedule", metavar="FILE", help="YAML/JSON/JSONL list of {at: seconds, prompt: text}")
    g.add_argument("--seconds", type=positive_float, default=5.0, help="video length in seconds (default 5)")
    g.add_argument("--sampler", choices=SAMPLER_KINDS, help="override sampler.kind")
    g.add_argument("--out", required=True, metavar="FILE.mp4", help="output video")
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="benchmarks (print JSON)")
    bsub = b.add_subparsers(dest="bench", metavar="BENCH", required=True)
    bs = bsub.add_parser("stream", help="streaming throughput: fps, first-frame latency, memory",
                         epilog=EPILOG, description="Stream --seconds of video once and report latent/video frames, "
                         "wall time, fps, first-frame latency, peak RSS (and CUDA) bytes and KV-cache bytes.")
    _add_config_args(bs)
    bs.add_argument("--checkpoint", metavar="DIR", help="exported checkpoint dir")
    bs.add_argument("--seconds", type=positive_float, default=10.0, help="video length in seconds (default 10)")
    bs.add_argument("--sampler", choices=SAMPLER_KINDS, help="override sampler.kind")
    bs.add_argument("--prompt", default="a red ball bouncing on a wooden floor", help="prompt to stream")
    bs.add_argument("--recompute", action="store_true",
                    help="cache-free reference: recompute every pass from scratch with an explicit mask")
    bs.add_argument("--json", action="store_true", help="print one JSON object")
    bs.set_defaults(func=cmd_bench_stream)

    cli_data.register(sub, _add_config_args)
    cli_train.register(sub, _add_config_args)
    cli_run.register(sub, _add_config_args)
    cli_eval.register(sub, _add_config_args)

    c = sub.add_parser("config", help="print the resolved config (defaults <- --config <- overrides)", epilog=EPILOG)
    _add_config_args(c)
    c.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may sit anywhere among the flags (`--run-dir D a=1 --stages x b=2`): argparse stops
    # the positional list at the first flag, so the key=value leftovers are collected here.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except ConfigError as e:
        message = f"rollforge: config error: {e}"
    except (FileNotFoundError, ValueError) as e:
        message = f"rollforge: error: {e}"
    report_error(message)  # under `--nproc`, the launcher prints it once, after every rank has stopped
    return 2


if __name__ == "__main__":
    sys.exit(main())
