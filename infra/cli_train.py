"""`rollforge train` and `rollforge export`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .cli_types import nonneg_int, positive_int
from .config import load_config
from .launch import report_error
from .logs import route_library_logs
from .progress_lines import ProgressLines
from .schema import Config
from .tracking import store_uri, ui_command

EPILOG = "Overrides: any config key as key.sub=value, e.g. train.zero_stage=3 train.generator.lr=1.0e-5"


def _train_config(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides) + [f"train.stage={args.stage}"]
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    return load_config(Config, args.config, overrides)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _train_config(args)  # validate before spawning anything
    if cfg.rollouts.workers > 0 and cfg.train.stage in ("ode_init", "distill") and not args.ray:
        print(f"rollforge: rollouts.workers={cfg.rollouts.workers}: rollout workers are Ray actors, so the "
              f"learners run under Ray Train too (as with --ray, {args.nproc} workers)", file=sys.stderr)
        args.ray = True
    if args.ray:
        from .ray_train import train_with_ray

        route_library_logs(args.run_dir)
        with ProgressLines(Path(args.run_dir), cfg.train.max_steps):  # the workers' output stays in Ray's logs
            result = train_with_ray(cfg, args.run_dir, args.nproc)
        print(f"stage {cfg.train.stage} finished under Ray Train ({args.nproc} workers): {result.metrics}")
        return 0
    if args.nproc > 1 and "RANK" not in os.environ:
        from .launch import launch_ranks

        argv = list(sys.argv[1:])
        i = argv.index("--nproc")
        del argv[i:i + 2]
        return launch_ranks(argv, args.nproc)
    from training.objectives import NonFiniteLoss
    from training.trainer import train_loop

    route_library_logs(args.run_dir)
    try:
        logs = train_loop(cfg, args.run_dir, resume=args.resume)
    except NonFiniteLoss as e:
        report_error(f"rollforge: training stopped: {e}")
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"stage {cfg.train.stage} finished at step {cfg.train.max_steps}: mean loss of the last "
              f"{cfg.train.log_every} steps {logs.get('loss_mean', float('nan')):.5f}"
              f"; checkpoint {logs.get('checkpoint')}; MLflow: {ui_command(store_uri(cfg.tracking, args.run_dir))}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from training.export import ExportError, export_checkpoint

    try:
        out = export_checkpoint(args.run_dir, args.out, ema=args.ema, step=args.step, config_type=Config,
                                dtype=args.dtype, format=args.format)
    except ExportError as e:  # one clear line, as every other input error (not a traceback)
        raise ValueError(f"export: {e}") from None
    run_cfg = load_config(Config, Path(args.run_dir) / "config.resolved.yaml")
    if run_cfg.tracking.enabled and (Path(args.run_dir) / "mlflow_run_id").is_file():
        from .tracking import Tracker

        with Tracker(run_cfg.tracking, Path(args.run_dir), run_name=run_cfg.train.stage) as tracker:
            tracker.log_artifacts(out, "export_ema" if args.ema else "export")
    if args.format == "diffusers":
        print(f"exported {'EMA ' if args.ema else ''}weights to {out} as a diffusers WanTransformer3DModel folder "
              f"(rollforge import --from diffusers --input {out} --out DIR turns it back into a Wan-layout export)")
        return 0
    print(f"exported {'EMA ' if args.ema else ''}weights to {out} "
          f"(rollforge generate --config {Path(args.run_dir) / 'config.resolved.yaml'} --checkpoint {out} --prompt ...)")
    return 0


def register(sub: argparse._SubParsersAction, add_config_args) -> None:
    t = sub.add_parser("train", help="train a stage (teacher | ode_init | distill) with DeepSpeed", epilog=EPILOG,
                       description="Run one training stage. Checkpoints go to RUN_DIR/checkpoints (atomic, "
                       "keep-last-K); --resume continues bit-exactly from the latest complete one. "
                       "Metrics go to MLflow (SQLite in RUN_DIR by default).")
    add_config_args(t)
    t.add_argument("--stage", required=True, choices=("teacher", "ode_init", "distill"))
    t.add_argument("--run-dir", required=True, metavar="DIR")
    t.add_argument("--max-steps", type=positive_int, help="override train.max_steps")
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR's latest checkpoint")
    t.add_argument("--nproc", type=positive_int, default=1, help="local processes / Ray Train workers (gloo on CPU, NCCL on GPU)")
    t.add_argument("--ray", action="store_true",
                   help="run the learners under Ray Train (local Ray, or ray.address=auto for a cluster); "
                   "a dead worker restarts the group from the latest checkpoint (ray.max_failures)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="consolidate a run's checkpoint into model.safetensors + config.json",
                       description="ZeRO shards (or the EMA) -> one safetensors file in the Wan key layout, "
                       "config.json and a model card; `rollforge generate --checkpoint OUT` streams from it.")
    e.add_argument("--run-dir", required=True, metavar="DIR")
    e.add_argument("--out", required=True, metavar="DIR")
    e.add_argument("--ema", action="store_true", help="export the EMA weights")
    e.add_argument("--step", type=nonneg_int, help="a specific checkpoint step (default: latest)")
    e.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="stored weight type (default float32); float16 halves the file, loading casts back")
    e.add_argument("--format", default="wan", choices=("wan", "diffusers"),
                   help="wan (default): model.safetensors in Wan's key layout + config.json, what `generate` loads; "
                   "diffusers: a WanTransformer3DModel folder (diffusion_pytorch_model.safetensors + its "
                   "config.json, ours kept under `_rollforge` for `rollforge import --from diffusers`)")
    e.set_defaults(func=cmd_export)
