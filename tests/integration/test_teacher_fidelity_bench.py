"""teacher_fidelity on real world latents: an untrained (random) teacher is flagged as not distillable."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_LATENT_CLIPS

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs/tiny.yaml")
pytestmark = pytest.mark.slow


def test_random_teacher_fails_both_checks(tiny_latents):
    proc = subprocess.run([sys.executable, str(REPO / "bench/teacher_fidelity.py"), "--config", TINY,
                           "--latents", str(tiny_latents), "--clips", str(TINY_LATENT_CLIPS + 2), "--sigmas", "0.3,1.0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["clips"] == TINY_LATENT_CLIPS  # only these clips exist: all are scored, none invented
    assert set(out["denoising"]) == {"0.3", "1.0"}
    # random weights: far worse than predicting the clip's mean value, at every level
    assert all(v["x0_rel_error"] > 1.0 for v in out["denoising"].values())
    # the world's flat backgrounds and solid shapes vs noise: samples far rougher than the data
    assert out["data"]["spatial_diff"] < 15
    assert out["sample_over_data"]["spatial_diff"] > 3
