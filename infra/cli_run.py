"""`rollforge run`: the whole pipeline (shard -> ... -> export) with nested MLflow runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import load_config
from .logs import ray_log_dir, route_library_logs
from .schema import Config
from .tracking import store_uri, ui_command

EPILOG = ("Overrides: any config key as key.sub=value, e.g. run.distill.max_steps=200 run.learners=2 "
          "ray.address=auto tracking.uri=http://127.0.0.1:5000")


def cmd_run(args: argparse.Namespace) -> int:
    from .cli_eval import world_headline
    from .dag import run_pipeline

    cfg = load_config(Config, args.config, args.overrides)
    if args.stages:
        cfg.run.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
        cfg.validate()
    logs = route_library_logs(args.run_dir)
    records = run_pipeline(cfg, args.run_dir)
    run_dir = Path(args.run_dir).resolve()
    print(f"pipeline finished: {', '.join(records)} in {run_dir}")
    if "evaluate" in records:
        print(f"  report:      {run_dir / 'eval' / 'report.html'} (markdown: report.md beside it)")
        print(f"  evaluation:  {run_dir / 'eval' / 'metrics.json'} (videos in {run_dir / 'eval' / 'videos'})")
        metrics = records["evaluate"].get("metrics", {})
        for sampler in cfg.run.evaluate.samplers:
            if f"{sampler}/world_chunk_pass_rate" in metrics:
                print(f"  {sampler + ':':<12} world checks {world_headline(metrics, sampler)}")
    if "export" in records:
        rec = records["export"]
        model = f" (MLflow model {rec['registered_model']} v{rec['model_version']})" if rec.get("registered_model") else ""
        print(f"  student:     {run_dir / 'export'}{model}")
        print(f"  stream it:   rollforge generate --config {run_dir / 'export' / 'config.yaml'} "
              f"--checkpoint {run_dir / 'export'} --prompt \"...\" --seconds 30 --out video.mp4")
    print(f"  MLflow:      {ui_command(store_uri(cfg.tracking, run_dir))}")
    print(f"  logs:        {logs} (libraries); Ray workers: {ray_log_dir() or 'Ray was not started'}")
    return 0


def register(sub: argparse._SubParsersAction, add_config_args) -> None:
    r = sub.add_parser("run", help="the whole pipeline: shard -> precompute -> teacher -> ode_init -> distill -> "
                       "evaluate -> export", epilog=EPILOG,
                       description="Run every stage in run.stages as one MLflow parent run with a nested run per "
                       "stage, on a local Ray (or ray.address=auto). A stage whose outputs are complete for the same "
                       "config is skipped, so rerunning resumes an interrupted run and a finished one does nothing. "
                       "Training stages run under Ray Train (run.learners workers) and restart from their latest "
                       "checkpoint; the final student is exported and registered in the MLflow model registry.")
    add_config_args(r)
    r.add_argument("--run-dir", required=True, metavar="DIR", help="everything the run writes goes here")
    r.add_argument("--stages", metavar="A,B,...", help="override run.stages, e.g. teacher,ode_init,distill")
    r.set_defaults(func=cmd_run)
