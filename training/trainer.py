"""The one trainer loop: build the stage's objective, step, guard, log, checkpoint, resume.

`train_loop(cfg, run_dir)` is a plain function (Ray Train runs it too). Every rank runs it; rank 0
owns MLflow and the console. A run stopped at step N and resumed from its checkpoint ends with
bit-identical weights on CPU: engines (weights, optimizer, scheduler), EMA shards, every rank's
RNG states, noise generators and the data position are all in the checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from infra.config import flatten, save_resolved, to_dict
from infra.tracking import Tracker
from pipeline.generator import DTYPES, resolve_device

from .checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .dist import barrier, init_distributed
from .loss_window import LossWindow
from .objectives import NonFiniteLoss, build_objective
from .progress import ProgressFile

log = logging.getLogger("rollforge.train")


KILL_ENV = "ROLLFORGE_KILL_AT_STEP"  # test hook: the last rank dies once at this step (learner failure)


def train_loop(cfg, run_dir: str | Path, resume: bool = False, progress: bool = True,
               on_checkpoint: Callable[[Path, int, dict], None] | None = None) -> dict:
    """Train `cfg.train.stage` to `cfg.train.max_steps`; returns the last logs (rank 0 adds 'checkpoint').

    `on_checkpoint(path, step, metrics)` runs on every rank after each checkpoint (Ray Train reports).
    """
    run_dir = Path(run_dir)
    device = resolve_device(cfg.runtime.device)
    dtype = DTYPES[cfg.runtime.dtype]
    rank, world = init_distributed(device)
    torch.manual_seed(cfg.train.seed * 1000 + rank)
    random.seed(cfg.train.seed)  # schedule choices: drawn on rank 0 and broadcast, identical stream everywhere
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run_dir)
    objective = build_objective(cfg, device, dtype, rank, world, run_dir)
    engines, ema, tr = objective.engines, objective.ema, cfg.train
    start = 0
    window = LossWindow(tr.log_every)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, engines, ema, rank)
        if state["meta"]["world_size"] != world:
            raise ValueError(f"{ckpt}: saved with {state['meta']['world_size']} processes, resuming with {world}")
        start = state["step"]
        set_rng_state(state["rng"])
        objective.load_state_dict(state["objective"])
        consecutive = state["nonfinite_consecutive"]
        total_nonfinite = state["nonfinite_total"]
        window.load_state_dict(state.get("loss_window", {}))  # absent in checkpoints before 2026-12-07
    else:
        consecutive = total_nonfinite = 0
    tracker = Tracker(cfg.tracking, run_dir, run_name=f"{tr.stage}", rank=rank)
    if start == 0:
        tracker.log_params(flatten(to_dict(cfg)))
    meta = {"stage": tr.stage, "world_size": world, "zero_stage": tr.zero_stage, "engines": list(engines)}
    logs: dict = {}
    bar = _progress(rank == 0 and progress, tr.max_steps, start)
    live = ProgressFile(run_dir, tr.stage, tr.max_steps, enabled=rank == 0)
    live.update(start, force=True)
    window_start, window_tokens = time.perf_counter(), 0
    try:
        for step in range(start + 1, tr.max_steps + 1):
            logs = objective.train_step(step)
            window.push(logs)
            logs.update(window.means())
            _maybe_die(run_dir, step, rank, world)
            if ema is not None and objective.ema_due(logs):
                ema.update(step)
            if logs.get("stepped", True):
                consecutive = 0
            else:
                consecutive += 1
                total_nonfinite += 1
                log.warning("step %d: non-finite loss, step skipped (%d in a row)", step, consecutive)
                if consecutive >= tr.max_nonfinite:
                    raise NonFiniteLoss(f"{consecutive} non-finite losses in a row (train.max_nonfinite="
                                        f"{tr.max_nonfinite}); stopping. Lower the learning rate or check the data.")
            window_tokens += logs.pop("tokens", 0) * world
            if step % tr.log_every == 0 or step == tr.max_steps:
                elapsed = time.perf_counter() - window_start
                metrics = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
                metrics.update({"tokens_per_s": window_tokens / elapsed, "nonfinite_total": total_nonfinite,
                                **{f"lr/{n}": e.get_lr()[0] for n, e in engines.items()},
                                **{f"grad_norm/{n}": float(e.get_global_grad_norm() or 0.0) for n, e in engines.items()}})
                tracker.log_metrics(metrics, step)
                live.update(step, metrics, force=True)
                window_start, window_tokens = time.perf_counter(), 0
            if step % tr.checkpoint_every == 0 or step == tr.max_steps:
                trainer_state = {"step": step, "rng": rng_state(), "objective": objective.state_dict(),
                                 "nonfinite_consecutive": consecutive, "nonfinite_total": total_nonfinite,
                                 "loss_window": window.state_dict()}
                path = save_checkpoint(run_dir, step, engines, ema, trainer_state, meta, rank, tr.keep_last)
                logs["checkpoint"] = str(path)
                if on_checkpoint is not None:
                    on_checkpoint(path, step, {k: float(v) for k, v in logs.items() if isinstance(v, int | float)})
            if cfg.tracking.video_every and step % cfg.tracking.video_every == 0 and step != tr.max_steps:
                _maybe_sample(cfg, ema, tracker, step, run_dir, rank)
            if bar is not None:
                bar.update(bar.tasks[0].id, advance=1, loss=float(logs.get("loss_mean", float("nan"))))
            live.update(step, {k: logs[k] for k in ("loss", "loss_mean") if k in logs} or None, force=step == tr.max_steps)
        _maybe_sample(cfg, ema, tracker, tr.max_steps, run_dir, rank)
        tracker.close("FINISHED")
    except BaseException:
        tracker.close("FAILED")
        raise
    finally:
        if bar is not None:
            bar.stop()
    return logs


def _maybe_die(run_dir: Path, step: int, rank: int, world: int) -> None:
    """Test hook for learner fault tolerance: the last rank exits hard once at step $ROLLFORGE_KILL_AT_STEP."""
    if os.environ.get(KILL_ENV) != str(step) or rank != world - 1:
        return
    marker = run_dir / f".killed_at_{step}"
    if not marker.exists():
        marker.touch()
        os._exit(1)


def _maybe_sample(cfg, ema, tracker, step: int, run_dir: Path, rank: int) -> None:
    """Log a sample video of the EMA weights (every rank calls: gathering is a collective under ZeRO-3)."""
    if not cfg.tracking.enabled or ema is None:
        return
    weights = ema.full_state_dict()
    if rank == 0 and tracker.run_id is not None:
        _log_sample_video(cfg, weights, tracker, step, run_dir)
    # Other ranks wait here rather than inside the next step's collectives (DeepSpeed's CPU
    # shared-memory collectives abort on long waits; a process-group barrier does not).
    barrier()


def _log_sample_video(cfg, weights: dict, tracker, step: int, run_dir: Path) -> None:
    """Stream a short clip with the EMA weights (teacher: bidirectional) and log it to MLflow."""
    from pipeline.generator import PromptSchedule, StreamingGenerator
    from pipeline.video_io import Mp4Writer

    saved = rng_state()  # building the generator seeds torch: training randomness must not notice
    gen = StreamingGenerator(cfg)
    set_rng_state(saved)
    gen.model.load_state_dict({k: v.to(gen.dtype) for k, v in weights.items()})
    sampler = "bidirectional" if cfg.train.stage == "teacher" else "rolling"
    path = run_dir / "samples" / f"step_{step:06d}.mp4"
    blocks = cfg.stream.context_blocks
    with Mp4Writer(path, cfg.video.fps, cfg.video.width, cfg.video.height) as writer:
        for frames in gen.stream_video(PromptSchedule.single("a red circle bouncing on a black background"),
                                       blocks, sampler):
            writer.write(frames)
    tracker.log_artifact(path, "samples")


def _progress(enabled: bool, total: int, done: int):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("mean loss {task.fields[loss]:.4f}"),
                   TimeElapsedColumn(), console=Console(stderr=True))
    bar.add_task("train", total=total, completed=done, loss=float("nan"))
    bar.start()
    return bar
