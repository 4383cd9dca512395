"""Learners under Ray Train: a worker killed mid-training restarts from the last checkpoint and the run
ends with the weights of an uninterrupted run (CPU, 2 workers, gloo, DeepSpeed ZeRO-2). The uninterrupted
run is the same training under torchrun (`--nproc 2` without `--ray`): both launchers give the same ranks
the same data and seeds, so the two must agree bit for bit."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs/tiny.yaml")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def latents(tiny_latents):
    """Procedural world videos -> shards -> latents + MiniLM text (the real data path; conftest)."""
    return tiny_latents


def train(run_dir, latents, env=None, ray=True):
    exe = shutil.which("rollforge") or str(Path(sys.executable).parent / "rollforge")
    args = [exe, "train", *(["--ray"] if ray else []), "--nproc", "2", "--config", TINY, "--stage", "teacher",
            "--run-dir", str(run_dir), "--max-steps", "6", f"data.latents={latents}", "train.checkpoint_every=2",
            "tracking.enabled=false"]
    base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, not the test's
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600, env={**base, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_killed_learner_restarts_from_checkpoint_with_identical_result(latents, tmp_path):
    train(tmp_path / "straight", latents, ray=False)
    train(tmp_path / "killed", latents, env={"ROLLFORGE_KILL_AT_STEP": "4"})
    assert (tmp_path / "killed/.killed_at_4").exists()  # the hook really killed a worker
    assert (tmp_path / "killed/ray").is_dir()  # Ray Train's storage path holds the reported checkpoints
    for name in ("ema.safetensors", "ema_rank0.safetensors", "ema_rank1.safetensors"):
        a = load_file(str(tmp_path / "straight/checkpoints/step_000006" / name))
        b = load_file(str(tmp_path / "killed/checkpoints/step_000006" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # Under ZeRO-2 the EMA is sharded: each rank's file holds its half of every tensor, not a full copy.
    ckpt = tmp_path / "straight/checkpoints/step_000006"
    full = load_file(str(ckpt / "ema.safetensors"))
    shards = [load_file(str(ckpt / f"ema_rank{r}.safetensors")) for r in (0, 1)]
    for name, tensor in full.items():
        assert all(s[name].numel() == -(-tensor.numel() // 2) for s in shards), name
        assert torch.equal(torch.cat([s[name] for s in shards])[: tensor.numel()].view(tensor.shape), tensor), name
