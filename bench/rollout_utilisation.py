"""Benchmark: learner utilisation of `distill` with rollouts in the learner vs decoupled rollout workers.

Builds real latents (procedural world videos -> shards -> precompute) and a random stand-in teacher,
then runs the same short distill on the tiny config twice, both under Ray Train with one learner:
rollouts.workers=0 (the learner rolls out history + continuation) and rollouts.workers=N (Ray
actors make the history, the learner rolls out only the scored continuation). Per mode, from the
run's MLflow metrics (warm-up steps skipped):
    steps_per_s          learner optimizer steps per wall second (from the metric timestamps)
    s_per_step           learner step time = time/data + time/rollout + time/compute (mean)
    rollout_share        time/rollout / step time (the learner's own rolling out)
    wait_share           rollout/wait_s / step time (blocked waiting for a history)
    histories_per_s      histories the workers produced per second (pool-wide)
    dropped_stale        histories dropped as too stale (cumulative)
Usage: python bench/rollout_utilisation.py [--steps 25] [--workers 2] [--cpus-per-worker 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from data.synthetic import world_latents
from evaluation.throughput import machine_info
from infra.config import load_config
from infra.schema import Config
from pipeline.networks.checkpoints import save_weights
from pipeline.networks.wan_dit import build_dit

WARMUP = 3  # first steps include JIT/caches/queue fill


def run_distill(run_dir: Path, latents: Path, teacher: Path, steps: int, workers: int, cpus: float) -> dict:
    exe = shutil.which("rollforge") or str(Path(sys.executable).parent / "rollforge")
    cmd = [exe, "train", "--ray", "--nproc", "1", "--config", "configs/tiny.yaml", "--stage", "distill",
           "--run-dir", str(run_dir), "--max-steps", str(steps), f"data.latents={latents}", f"train.teacher={teacher}",
           "train.log_every=1", f"train.checkpoint_every={steps}", "ray.num_cpus=4", f"rollouts.workers={workers}",
           f"rollouts.cpus_per_worker={cpus}"]
    start = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir}/mlflow.db")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()

    def history(key: str) -> list:
        return sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)[WARMUP:]

    def series(key: str) -> list[float]:
        return [m.value for m in history(key)]

    stamps = [m.timestamp for m in history("loss")]
    parts = [sum(v) for v in zip(*(series(k) for k in ("time/data", "time/rollout", "time/compute")))]
    step_s = sum(parts)
    out = {"rollout_workers": workers, "steps": steps, "wall_s_with_startup": round(wall, 1),
           "steps_per_s": (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1000.0),
           "s_per_step": step_s / len(parts), "rollout_share": sum(series("time/rollout")) / step_s}
    if workers:
        out.update({"wait_share": sum(series("rollout/wait_s")) / step_s,
                    "histories_per_s": series("rollout/histories_per_s")[-1],
                    "worker_s_per_history": sum(series("rollout/worker_s")) / len(parts),
                    "mean_staleness": sum(series("rollout/staleness")) / len(parts),
                    "dropped_stale": series("rollout/dropped_stale")[-1]})
    else:
        out["wait_share"] = 0.0
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=float, default=0.5)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rollforge-rollout-bench-"))
    cfg = load_config(Config, "configs/tiny.yaml")
    world_latents(cfg, root, count=8, seconds=2.0, seed=0, shard_size=4, workers=2)
    teacher = save_weights(build_dit(cfg.model, seed=0, zero_head=False), root / "teacher.safetensors")
    results = [run_distill(root / "off", root / "latents", teacher, args.steps, 0, args.cpus_per_worker),
               run_distill(root / "on", root / "latents", teacher, args.steps, args.workers, args.cpus_per_worker)]
    print(json.dumps({"config": "configs/tiny.yaml", "learners": 1, "results": results, "machine": machine_info()},
                     indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
