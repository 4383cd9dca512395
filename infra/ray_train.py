"""Learners under Ray Train: a TorchTrainer runs `train_loop` on N workers with DeepSpeed inside.

Every checkpoint is reported with `ray.train.report` (rank 0 attaches the checkpoint directory,
which Ray copies into the run's storage path); `FailureConfig(max_failures)` restarts the whole
worker group when a worker dies, and the restarted `train_loop` resumes from the run directory's
latest complete checkpoint, so the run finishes with the weights an uninterrupted run would have.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import from_dict, to_dict
from .distributed import init_ray
from .schema import Config

FORWARDED_ENV = ("TORCH_EXTENSIONS_DIR", "HF_HUB_OFFLINE", "ROLLFORGE_KILL_AT_STEP", "ROLLFORGE_CRASH_DURING_SAVE")


def _worker(config: dict) -> None:
    import ray.train

    from training.trainer import train_loop

    cfg = from_dict(Config, config["cfg"])
    cfg.validate()
    rank = ray.train.get_context().get_world_rank()

    def report(path: Path, step: int, metrics: dict) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(path)) if rank == 0 else None
        ray.train.report({**metrics, "step": step}, checkpoint=checkpoint)

    # Restarts after a failure resume from the run dir's latest complete checkpoint.
    train_loop(cfg, config["run_dir"], resume=True, progress=False, on_checkpoint=report)


def train_with_ray(cfg: Config, run_dir: str | Path, num_workers: int):
    """Run `cfg.train.stage` on `num_workers` Ray Train workers; returns Ray's Result."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    run_dir = Path(run_dir).resolve()
    init_ray(cfg.ray)
    gpu = cfg.runtime.device == "cuda"
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": to_dict(cfg), "run_dir": str(run_dir)},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpu, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"{cfg.train.stage}", storage_path=str(run_dir / "ray"),
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
                             worker_runtime_env={"env_vars": env}),
    )
    return trainer.fit()
