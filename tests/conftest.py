"""Shared fixtures: micro model configs and the Wan2.1 reference layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]


def layout_path() -> Path:
    """wan2.1_layout.json: $ROLLFORGE_LAYOUT_JSON, else the copy in tests/fixtures (Wan2.1's parameter
    names -> shapes for the 1.3B and 14B DiT and the VAE, instantiated on the meta device)."""
    env = os.environ.get("ROLLFORGE_LAYOUT_JSON")
    return Path(env) if env else REPO / "tests/fixtures/wan2.1_layout.json"


@pytest.fixture(scope="session")
def wan_layout() -> dict:
    return json.loads(layout_path().read_text())


@pytest.fixture
def micro_cfg() -> ModelConfig:
    """2 layers, dim 32, 4x4 latent with patch 2 -> 4 tokens per frame."""
    return ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=8, text_len=6)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rollforge(*args, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the installed `rollforge` CLI from the repo root (tests import this from conftest)."""
    exe = shutil.which("rollforge") or str(Path(sys.executable).parent / "rollforge")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"rollforge {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


TINY_LATENT_CLIPS = 4  # world videos of 1.5 s in `tiny_latents`


@pytest.fixture(scope="session")
def tiny_latents(tmp_path_factory) -> Path:
    """ROOT/latents: 4 world clips of 1.5 s at configs/tiny.yaml's size, in shards of 2, seed 0.

    Building latents runs the whole data path (procedural world videos -> webdataset shards -> Ray Data
    precompute with the real codec and MiniLM), about a minute on 2 cores, so the integration modules
    that train share one set per session. They only read it; tests that need altered shards copy them.
    """
    from filelock import FileLock

    from data.synthetic import world_latents
    from infra.config import load_config
    from infra.schema import Config

    def build(root: Path) -> Path:
        return world_latents(load_config(Config, REPO / "configs/tiny.yaml"), root, count=TINY_LATENT_CLIPS, seed=0,
                             workers=2)

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build(tmp_path_factory.mktemp("tiny_latents"))
    # Under pytest-xdist (`make test` runs 2 workers) the first worker builds the set into the run's
    # shared base directory and the other waits for it, so it is still built once per session.
    shared = tmp_path_factory.getbasetemp().parent / "tiny_latents"
    with FileLock(str(shared) + ".lock"):
        done = shared / "built.json"
        if done.is_file():
            return Path(json.loads(done.read_text())["latents"])
        shared.mkdir(exist_ok=True)
        latents = build(shared)
        done.write_text(json.dumps({"latents": str(latents)}))
        return latents


# The longest files first, alternating files that read `tiny_latents` with files that do not: under
# `make test` (2 workers, one file at a time) one worker builds the latents while the other runs a
# long file that needs none, rather than waiting for them, and no long file starts last.
LONG_FIRST = ("integration/test_run_pipeline.py", "integration/test_train.py", "integration/test_prompt_only.py",
              "integration/test_ray_train.py", "integration/test_cli.py", "integration/test_rollout_workers.py")


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return next((i for i, tail in enumerate(LONG_FIRST) if path.endswith(tail)), len(LONG_FIRST))

    items.sort(key=rank)  # stable: the order within a file, and of every other file, is unchanged
