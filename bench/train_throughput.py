"""Benchmark: training throughput per stage on the tiny config (tokens/s, step-time split, data wait).

Builds real latents (procedural world videos -> shards -> precompute), then runs each stage with
`rollforge train` and reads its MLflow metrics. One JSON object per stage:
    tokens_per_s        latent tokens through the trained network per second (all ranks)
    s_per_step          wall seconds per optimizer step (mean over logged steps after the first)
    data_wait_share     time/data / step time (goal < 5 %)
Usage: python bench/train_throughput.py [--steps 20] [--nproc 1] [--zero 2]
"""

from __future__ import annotations

import argparse
import json
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


def run_stage(stage: str, run_dir: Path, latents: Path, steps: int, nproc: int, zero: int, *over: str) -> dict:
    exe = shutil.which("rollforge") or str(Path(sys.executable).parent / "rollforge")
    cmd = [exe, "train", "--config", "configs/tiny.yaml", "--stage", stage, "--run-dir", str(run_dir),
           "--max-steps", str(steps), "--nproc", str(nproc), f"data.latents={latents}", "train.log_every=1",
           f"train.checkpoint_every={steps}", f"train.zero_stage={zero}", *over]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir}/mlflow.db")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()

    def series(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)][1:]

    tok = series("tokens_per_s")
    data = series("time/data")
    parts = [sum(v) for v in zip(*(series(k) for k in ("time/data", "time/rollout", "time/compute") if series(k)))]
    return {"stage": stage, "steps": steps, "nproc": nproc, "zero_stage": zero, "wall_s_with_startup": wall,
            "tokens_per_s": sum(tok) / len(tok), "s_per_step": sum(parts) / len(parts),
            "data_wait_share": sum(data) / sum(parts)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--zero", type=int, default=2)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rollforge-train-bench-"))
    latents = world_latents(load_config(Config, "configs/tiny.yaml"), root, count=8, seconds=2.0, seed=0,
                            shard_size=4, workers=2)
    results = [run_stage("teacher", root / "teacher", latents, args.steps, args.nproc, args.zero)]
    teacher = root / "teacher" / "checkpoints" / f"step_{args.steps:06d}" / "ema.safetensors"
    results.append(run_stage("ode_init", root / "ode", latents, args.steps, args.nproc, args.zero,
                             f"train.teacher={teacher}", "train.ode_pairs=8", "train.ode_teacher_steps=10"))
    results.append(run_stage("distill", root / "dmd", latents, args.steps, args.nproc, args.zero,
                             f"train.teacher={teacher}"))
    print(json.dumps({"results": results, "machine": machine_info()}, indent=2))


if __name__ == "__main__":
    main()
