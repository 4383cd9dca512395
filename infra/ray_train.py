"""Learners under Ray Train: a TorchTrainer runs `train_loop` on N workers with DeepSpeed inside.

Every checkpoint is reported with `ray.train.report` (rank 0 attaches the checkpoint directory,
which Ray copies into the run's storage path); `FailureConfig(max_failures)` restarts the whole
worker group when a worker dies, and the restarted `train_loop` resumes from the run directory's
latest complete checkpoint, so the run finishes with the weights an uninterrupted run would have.

With `rollouts.workers > 0` the driver first starts the rollout workers (infra/rollout_workers.py):
a supervised pool of student workers for `distill` (each learner finds it by name and installs a
`RayHistorySource`), or teacher workers that write the ODE pairs for `ode_init` before training.
The pool is closed after `fit`, also when it fails.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

from .config import from_dict, to_dict
from .config_paths import absolute_paths
from .distributed import init_ray
from .schema import Config

log = logging.getLogger("rollforge.ray_train")

FORWARDED_ENV = ("TORCH_EXTENSIONS_DIR", "HF_HUB_OFFLINE", "ROLLFORGE_KILL_AT_STEP", "ROLLFORGE_CRASH_DURING_SAVE",
                 "ROLLFORGE_KILL_ROLLOUT_AFTER")


def _worker(config: dict) -> None:
    import ray.train

    from training.trainer import train_loop

    cfg = from_dict(Config, config["cfg"])
    cfg.validate()
    if cfg.ray.learner_threads:
        import torch

        torch.set_num_threads(cfg.ray.learner_threads)
    rank = ray.train.get_context().get_world_rank()
    if config.get("rollouts"):
        from training.history import set_history_source

        from .rollout_workers import RayHistorySource

        set_history_source(RayHistorySource(**config["rollouts"], get_timeout_s=cfg.rollouts.get_timeout_s))

    def report(path: Path, step: int, metrics: dict) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(path)) if rank == 0 else None
        ray.train.report({**metrics, "step": step}, checkpoint=checkpoint)

    # Restarts after a failure resume from the run dir's latest complete checkpoint.
    train_loop(cfg, config["run_dir"], resume=True, progress=False, on_checkpoint=report)


def train_with_ray(cfg: Config, run_dir: str | Path, num_workers: int):
    """Run `cfg.train.stage` on `num_workers` Ray Train workers (+ rollout workers); returns Ray's Result."""
    run_dir = Path(run_dir).resolve()
    cfg = _embedded_prompts(absolute_paths(cfg), run_dir)  # learners run in other working directories
    init_ray(cfg.ray)
    gpu = cfg.runtime.device == "cuda"
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    pool = _start_rollouts(cfg, run_dir)
    try:
        result = _fit(cfg, run_dir, num_workers, gpu, env, pool.address if pool is not None else None)
    finally:
        if pool is not None:
            pool.close()
    if pool is not None and pool.error is not None:
        raise pool.error
    return result


def _embedded_prompts(cfg: Config, run_dir: Path) -> Config:
    """Prompt-only data is embedded here, once, before any learner or rollout actor reads it: they
    all get data.prompts pointing at the embedded set (RUN/prompts/<stem>)."""
    if not cfg.data.prompts or cfg.train.stage == "teacher":
        return cfg
    from data.prompt_set import embed_prompt_source

    import torch

    device = "cuda" if cfg.runtime.device != "cpu" and torch.cuda.is_available() else "cpu"  # the driver's
    out = copy.deepcopy(cfg)
    out.data.prompts = str(embed_prompt_source(cfg.data.prompts, cfg.text, run_dir / "prompts", device))
    return out


def _start_rollouts(cfg: Config, run_dir: Path):
    """The distill rollout pool (started), after writing ode_init's teacher pairs; None without workers."""
    if cfg.rollouts.workers == 0:
        return None
    from .rollout_workers import RolloutPool, generate_ode_pairs_with_ray

    if cfg.train.stage == "ode_init":
        generate_ode_pairs_with_ray(cfg, run_dir)
        return None
    if cfg.train.stage == "distill":
        return RolloutPool(cfg, run_dir).start()
    log.warning("rollouts.workers=%d ignored: stage %s has no rollouts", cfg.rollouts.workers, cfg.train.stage)
    return None


def _fit(cfg: Config, run_dir: Path, num_workers: int, gpu: bool, env: dict, rollouts: dict | None):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": to_dict(cfg), "run_dir": str(run_dir), "rollouts": rollouts},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpu, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"{cfg.train.stage}", storage_path=str(run_dir / "ray"),
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
                             worker_runtime_env={"env_vars": env}),
    )
    return trainer.fit()
