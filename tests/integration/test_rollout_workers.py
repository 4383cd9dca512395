"""Decoupled rollout workers under real Ray + Ray Train + DeepSpeed + MLflow (CPU, 1 learner).

distill (ZeRO-3): two student workers feed histories; one is killed by the test hook and replaced; with
max_staleness=0 the histories queued while the learner starts up go stale once it publishes
version 1 and are dropped (counted). ode_init: teacher workers write the pairs parts, then it trains.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from infra.config import load_config
from infra.schema import Config
from pipeline.networks.checkpoints import save_weights
from pipeline.networks.wan_dit import build_dit

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs/tiny.yaml")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def latents(tiny_latents):
    """Procedural world videos -> shards -> latents + MiniLM text (the real data path; conftest)."""
    return tiny_latents


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A random (non-zero-head) DiT stands in for a trained teacher: the machinery is under test."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    return save_weights(build_dit(load_config(Config, TINY).model, seed=0, zero_head=False), path)


def train(run_dir, stage, latents, teacher, *over, steps, env=None):
    """`rollforge train` without --ray: rollouts.workers > 0 switches to Ray Train by itself."""
    exe = shutil.which("rollforge") or str(Path(sys.executable).parent / "rollforge")
    args = [exe, "train", "--nproc", "1", "--config", TINY, "--stage", stage, "--run-dir", str(run_dir),
            "--max-steps", str(steps), f"data.latents={latents}", f"train.teacher={teacher}", "ray.num_cpus=4",
            "rollouts.workers=2", "rollouts.cpus_per_worker=0.5", "train.log_every=1", "train.guidance_scale=1.0",
            "tracking.enabled=true", *over]
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600, env={**base, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "learners run under Ray Train" in proc.stderr
    return proc


def metric(run_dir, key):
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir}/mlflow.db")
    run_id = (Path(run_dir) / "mlflow_run_id").read_text().strip()
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_distill_with_student_rollout_workers_survives_a_dead_worker(latents, teacher, tmp_path):
    run = tmp_path / "dmd"
    # ZeRO-3: each publish gathers the partitioned generator (deepspeed.zero.GatheredParameters)
    # Histories drawn like the reference's rollouts: workers make 2 blocks, the learner cuts them to
    # 0-2 (one length for all ranks) and continues with the 6 scored blocks: 6-8 blocks in all.
    train(run, "distill", latents, teacher, "train.zero_stage=3", "rollouts.max_staleness=0", "rollouts.queue_size=4",
          "train.critic_updates_per_generator=2", "train.checkpoint_every=4",
          steps=4, env={"ROLLFORGE_KILL_ROLLOUT_AFTER": "2"})
    assert set(metric(run, "rollout/blocks")) <= {6.0, 7.0, 8.0}
    assert (run / ".rollout_killed_after_2").exists()  # the hook really killed a worker
    assert max(metric(run, "rollout/replaced")) >= 1  # ... and the pool replaced it
    assert metric(run, "rollout/dropped_stale")[-1] >= 1  # queued v0 histories went stale at version 1
    assert set(metric(run, "rollout/staleness")) == {0.0}  # max_staleness=0: only fresh ones are used
    assert len(metric(run, "loss/critic")) == 4 and len(metric(run, "loss/generator")) == 2
    assert all(v > 0 for v in metric(run, "rollout/worker_s"))
    assert max(metric(run, "rollout/histories_per_s")) > 0 and metric(run, "rollout/wait_s")
    assert (run / "checkpoints/step_000004/meta.json").is_file()  # final checkpoint written


def test_ode_init_with_teacher_rollout_workers(latents, teacher, tmp_path):
    run = tmp_path / "ode"
    train(run, "ode_init", latents, teacher, "train.ode_pairs=4", "train.ode_teacher_steps=4",
          "train.checkpoint_every=2", steps=2)
    names = sorted(p.name for p in (run / "ode_pairs").iterdir())
    assert names == ["workers_pairs.json", "workers_part000_of002.safetensors", "workers_part001_of002.safetensors"]
    from training.ode_parts import load_pair_parts

    pairs = load_pair_parts(run / "ode_pairs")
    assert len(pairs) == 4 and all({"x_levels", "x0", "text"} <= set(p) for p in pairs)
    losses = metric(run, "loss")
    assert len(losses) == 2 and all(v == v for v in losses)
    assert (run / "checkpoints/step_000002/meta.json").is_file()
