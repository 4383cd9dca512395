"""What the training benches share: `rollforge run` as a subprocess, the shared teacher + ODE init,
and one distilled student per setting (bench/drift_comparison.py, bench/ablation.py).

Every run goes through the real CLI, so a bench trains exactly what a user's `rollforge run` trains,
and rerunning a bench with the same settings skips finished stages by fingerprint.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .cli_types import positive_float, positive_int

Log = Callable[[str], None]


def add_training_bench_args(p: argparse.ArgumentParser, config: str, out: str) -> None:
    """The flags every training bench shares: its config, the shared teacher + ODE init to reuse,
    its output folder, the DMD budget and the stream length (a factor of the training rollout)."""
    p.add_argument("--config", default=config, help=f"root config (default: {config})")
    p.add_argument("--from-run", metavar="DIR", help="reuse DIR/teacher/export, DIR/ode_init/export and "
                   "DIR/data/latents (e.g. outputs/demo); default: build them in OUT/runs/base")
    p.add_argument("--out", default=out, metavar="DIR", help=f"output folder (default: {out})")
    p.add_argument("--distill-steps", type=positive_int, metavar="N",
                   help="DMD steps per student (default: the config's run.distill.max_steps)")
    p.add_argument("--length-factor", type=positive_float, default=10.0, metavar="F",
                   help="stream F x the longest training rollout, at least 10 s (default 10)")


def distill_steps(requested: int | None, cfg) -> int:
    """--distill-steps, else the config's run.distill.max_steps (else train.max_steps); positive."""
    steps = requested or int(cfg.run.distill.get("max_steps", cfg.train.max_steps))
    if steps < 1:
        raise ValueError(f"--distill-steps must be positive, got {steps}")
    return steps


def rollforge_run(config: str, run_dir: Path, stages: str, overrides: list[str], log_path: Path, log: Log) -> float:
    """`rollforge run` as a subprocess (its live view goes to `log_path`); returns the wall seconds."""
    exe = shutil.which("rollforge") or str(Path(sys.executable).parent / "rollforge")
    cmd = [exe, "run", "--config", config, "--run-dir", str(run_dir), "--stages", stages, *overrides]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log(f"rollforge run --stages {stages} --run-dir {run_dir} (log: {log_path})")
    start = time.perf_counter()
    with log_path.open("w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"rollforge run failed (exit {proc.returncode}) in {run_dir}:\n" + "\n".join(tail))
    return wall


def shared_start(config: str, from_run: str | None, out: Path, log: Log,
                 overrides: list[str] | None = None) -> tuple[dict, float]:
    """{teacher, init_from, latents} shared by every student, and the seconds spent making them:
    `from_run`'s exports (e.g. outputs/demo after `make demo`), else built in OUT/runs/base."""
    if from_run:
        src = Path(from_run).resolve()
        paths = {"teacher": src / "teacher" / "export", "init_from": src / "ode_init" / "export",
                 "latents": src / "data" / "latents"}
        missing = [str(p) for p in paths.values() if not p.is_dir()]
        if missing:
            raise FileNotFoundError(f"--from-run {src}: missing {', '.join(missing)} (run `make demo`, or leave "
                                    f"--from-run out to build the teacher and ODE init here)")
        return {k: str(v) for k, v in paths.items()}, 0.0
    base = out / "runs" / "base"
    wall = rollforge_run(config, base, "shard,precompute,teacher,ode_init", list(overrides or []),
                         out / "logs" / "base.log", log)
    return {"teacher": str(base / "teacher" / "export"), "init_from": str(base / "ode_init" / "export"),
            "latents": str(base / "data" / "latents")}, wall


def distill_student(config: str, out: Path, name: str, p_self_forcing: float, shared: dict, steps: int, log: Log,
                    overrides: list[str] | None = None) -> dict:
    """`rollforge run --stages distill,export` in OUT/runs/<name> from the shared teacher and init."""
    run_dir = out / "runs" / name
    args = [f"train.teacher={shared['teacher']}", f"train.init_from={shared['init_from']}",
            f"data.latents={shared['latents']}", f"run.distill.max_steps={steps}",
            f"run.distill.p_self_forcing={p_self_forcing}", *(overrides or [])]
    wall = rollforge_run(config, run_dir, "distill,export", args, out / "logs" / f"{name}.log", log)
    done = json.loads((run_dir / "stages" / "distill" / "done.json").read_text())
    return {"p_self_forcing": p_self_forcing, "distill_steps": steps, "run_dir": str(run_dir),
            "export": str(run_dir / "export"), "wall_s": wall, "train_s": done.get("seconds"),
            "final_step_metrics": {k: done.get("metrics", {}).get(k) for k in
                                   ("loss/generator", "loss/critic", "dmd/dmd_gradient_norm")}}


__all__ = ["add_training_bench_args", "distill_steps", "distill_student", "rollforge_run", "shared_start"]
