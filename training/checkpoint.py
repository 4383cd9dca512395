"""One directory per step holding everything a run needs to continue bit-exactly; atomic, keep-last-K.

    RUN/checkpoints/step_000006/meta.json              step, stage, world size, ZeRO stage
    RUN/checkpoints/step_000006/<engine>/ds/...         DeepSpeed engine.save_checkpoint (every rank)
    RUN/checkpoints/step_000006/ema.safetensors        consolidated generator EMA (Wan key layout)
    RUN/checkpoints/step_000006/ema_rank{r}.safetensors this rank's EMA shard (exact resume)
    RUN/checkpoints/step_000006/trainer_rank{r}.pt     counters, RNG states, data position (weights_only)
    RUN/checkpoints/latest                             name of the newest complete checkpoint

Everything is written under `step_XXXXXX.partial` and renamed when complete, then `latest` is
replaced atomically: a crash mid-save leaves the previous checkpoint as `latest`. Weights are
checked finite on every rank before anything is written.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .dist import all_true, barrier
from .ema import EMA
from .engines import engine_params_finite, restore_config_lr

CRASH_ENV = "ROLLFORGE_CRASH_DURING_SAVE"  # test hook: step at which a save dies half-way


class NonFiniteWeights(RuntimeError):
    pass


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: Path) -> Path | None:
    ptr = checkpoints_dir(run_dir) / "latest"
    if not ptr.is_file():
        return None
    path = checkpoints_dir(run_dir) / ptr.read_text().strip()
    return path if (path / "meta.json").is_file() else None


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, engines: dict, ema: EMA | None, trainer_state: dict, meta: dict,
                    rank: int, keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    finite = all(engine_params_finite(e) for e in engines.values())
    if ema is not None:
        finite = finite and all(torch.isfinite(t).all() for t in ema.shadow.values())
    if not all_true(finite):
        raise NonFiniteWeights(f"step {step}: non-finite weights on some rank; checkpoint not written")
    root = checkpoints_dir(run_dir)
    final = root / f"step_{step:06d}"
    tmp = root / f"step_{step:06d}.partial"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    for name, engine in engines.items():
        engine.save_checkpoint(str(tmp / name), tag="ds")
    torch.save(trainer_state, tmp / f"trainer_rank{rank}.pt")
    if ema is not None:
        save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp / f"ema_rank{rank}.safetensors"))
        full = ema.full_state_dict()
        if rank == 0:
            save_file({k: v.contiguous() for k, v in full.items()}, str(tmp / "ema.safetensors"))
    barrier()
    if os.environ.get(CRASH_ENV) == str(step):
        os._exit(17)  # simulated crash after the heavy writes, before the checkpoint is published
    if rank == 0:
        (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        ptr_tmp = root / "latest.tmp"
        ptr_tmp.write_text(final.name)
        os.replace(ptr_tmp, root / "latest")
        _prune(root, keep_last)
    barrier()
    return final


def _prune(root: Path, keep_last: int) -> None:
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".partial"))
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("step_*.partial"):
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(path: Path, engines: dict, ema: EMA | None, rank: int) -> dict:
    """Restore engines (weights + optimizer + scheduler), EMA and this rank's trainer state."""
    meta = json.loads((path / "meta.json").read_text())
    for name, engine in engines.items():
        loaded, _ = engine.load_checkpoint(str(path / name), tag="ds", load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
        if loaded is None:
            raise FileNotFoundError(f"{path / name}: no DeepSpeed checkpoint to resume from")
        restore_config_lr(engine.optimizer, engine.lr_scheduler, engine.global_steps)  # after ZeRO's group load
    if ema is not None:
        ema.load_state_dict(load_file(str(path / f"ema_rank{rank}.safetensors")))
    state = torch.load(path / f"trainer_rank{rank}.pt", map_location="cpu", weights_only=True)
    state["meta"] = meta
    return state
