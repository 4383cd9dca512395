"""`rollforge` command line: one subcommand per stage, each with --config FILE and key.sub=value overrides."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pipeline.config import SAMPLER_KINDS, ConfigError

from . import cli_data, cli_eval, cli_import, cli_plan, cli_run, cli_serve, cli_train
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
def _build_generator(cfg, checkpoint: str | None, random_text: bool):
    from pipeline.generator import StreamingGenerator, resolve_device
    from pipeline.networks.text_encoders import RandomTextEncoder

    encoder = RandomTextEncoder(cfg, resolve_device(cfg.runtime.device)) if random_text else None
    return StreamingGenerator(cfg, checkpoint=checkpoint, text_encoder=encoder)


def _capped(stream_video, max_wall_s: float | None, state: dict):
    """`gen.stream_video` that stops after the first chunk finishing past `max_wall_s` seconds
    (counted from the first request, as measure_stream's clock is); `state["stopped"]` says whether it cut."""

    def wrapped(*a, **kw):
        it = stream_video(*a, **kw)
        start = time.perf_counter()
        for chunk in it:
            yield chunk
            if max_wall_s is not None and time.perf_counter() - start >= max_wall_s:
                state["stopped"] = True
                it.close()
                return

    return wrapped


def cmd_bench_stream(args: argparse.Namespace) -> int:
    from evaluation.throughput import machine_info, measure_stream, peak_rss_bytes
    from pipeline.attention import resolve_backend
    from pipeline.generator import PromptSchedule

    cfg = load(args)
    if args.sampler:
        cfg.sampler.kind = args.sampler
        cfg.validate()
    gen = _build_generator(cfg, args.checkpoint, args.random_text)
    warmup_s = 0.0
    if args.warmup:  # one-time costs (kernel loads, autotuning) stay out of the first-frame latency
        t0 = time.perf_counter()
        for _ in gen.stream_video(PromptSchedule.single("warm-up"), cfg.stream.window_blocks + 2, cfg.sampler.kind):
            pass
        warmup_s = time.perf_counter() - t0
    total = gen.codec.video_frames(gen.blocks_for_seconds(args.seconds) * cfg.stream.frames_per_block)
    cut = {"stopped": False}
    gen.stream_video = _capped(gen.stream_video, args.max_wall_s, cut)
    timeline: list[dict] = []
    every = args.memory_every_s
    cuda = gen.device.type == "cuda"
    with _progress(transient=True) as bar:
        task = bar.add_task(f"bench {cfg.sampler.kind}{' (recompute)' if args.recompute else ''}", total=total, fps=0.0)
        start = time.perf_counter()

        def advance(n: int) -> None:
            done = bar.tasks[0].completed + n
            now = time.perf_counter()
            bar.update(task, completed=done, fps=done / max(now - start, 1e-9))
            if every and (not timeline or done / cfg.video.fps >= timeline[-1]["video_s"] + every):
                import torch

                timeline.append({"video_s": done / cfg.video.fps, "wall_s": now - start, "peak_rss_bytes": peak_rss_bytes(),
                                 **({"peak_cuda_bytes": torch.cuda.max_memory_allocated(gen.device),
                                     "cuda_allocated_bytes": torch.cuda.memory_allocated(gen.device)} if cuda else {})})

        result = measure_stream(gen, args.prompt, args.seconds, cfg.sampler.kind, recompute=args.recompute,
                                on_frames=advance)
    if cut["stopped"]:  # measure_stream counted the requested length; these are what was streamed
        result["latent_frames"] = None
    result.update({"requested_video_seconds": args.seconds, "completed": not cut["stopped"],
                   "max_wall_s": args.max_wall_s, "warmup_s": warmup_s, "random_text": args.random_text,
                   "attention_backend": resolve_backend() if cuda else "sdpa"})
    if every:
        result["memory_timeline"] = timeline
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
    bs.add_argument("--max-wall-s", type=positive_float, metavar="S",
                    help="stop the stream after the first block finished past S seconds of wall time and report "
                         "what was streamed by then (completed: false)")
    bs.add_argument("--memory-every-s", type=positive_float, metavar="S",
                    help="record peak memory (CUDA and RSS) every S seconds of video: memory_timeline")
    bs.add_argument("--warmup", action="store_true",
                    help="stream window_blocks + 2 blocks untimed first, so one-time costs stay out of the numbers")
    bs.add_argument("--random-text", action="store_true",
                    help="no text encoder: N(0, 1) text states of its shape (random-weight throughput runs "
                         "without the encoder's weights; it runs outside the clock either way)")
    bs.set_defaults(func=cmd_bench_stream)

    cli_data.register(sub, _add_config_args)
    cli_train.register(sub, _add_config_args)
    cli_run.register(sub, _add_config_args)
    cli_eval.register(sub, _add_config_args)
    cli_plan.register(sub, _add_config_args)
    cli_import.register(sub, _add_config_args)
    cli_serve.register(sub, _add_config_args)

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
