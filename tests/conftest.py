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


def layout_path() -> Path | None:
    """wan2.1_layout.json: $ROLLFORGE_LAYOUT_JSON, else ../shared/reference beside the checkout."""
    env = os.environ.get("ROLLFORGE_LAYOUT_JSON")
    for p in ([Path(env)] if env else []) + [REPO.parent / "shared/reference/wan2.1_layout.json",
                                             REPO / "shared/reference/wan2.1_layout.json"]:
        if p.is_file():
            return p
    return None


@pytest.fixture(scope="session")
def wan_layout() -> dict:
    p = layout_path()
    if p is None:
        pytest.skip("wan2.1_layout.json not found (set ROLLFORGE_LAYOUT_JSON)")
    return json.loads(p.read_text())


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
