"""`bash bench/gpu_check.sh --dry-run`: the GPU check's whole path at tiny shapes on CPU, one JSON object.

The real check runs only on a lent GPU; this keeps its driver, the `bench stream` flags it relies on
(--max-wall-s, --memory-every-s, --warmup, --random-text) and the DMD-step FLOP meter working.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pos(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "check.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    line = p.stdout.strip().splitlines()[-1]
    data = json.loads(line)
    assert json.loads(out.read_text()) == data  # --out writes the same object
    return data


def test_top_level_keys(report):
    for key in ("check", "dry_run", "device", "reference", "attention_parity", "stream", "dmd_step_mfu", "elapsed_s"):
        assert key in report, key
    assert report["dry_run"] is True
    assert report["reference"]["fps"] == 15.8 and report["reference"]["first_frame_latency_s"] == 0.76
    assert report["reference"]["source"]
    assert report["elapsed_s"] < 60


def test_attention_parity_reports_sdpa_and_a_skip_reason_for_flash(report):
    a = report["attention_parity"]
    assert a["shape"]["head_dim"] == 128
    for name in ("out", "dq", "dk", "dv"):
        err = a["sdpa_vs_float64"][name]
        assert math.isfinite(err["rel"]) and err["rel"] < 1e-4, (name, err)  # fp32 on CPU
    assert a["skipped"] is True and "CUDA" in a["reason"]


def test_streams_both_samplers_both_lengths_capped(report):
    runs = report["stream"]["runs"]
    assert set(runs) == {"rolling_30s", "block_ar_30s", "rolling_600s", "block_ar_600s"}
    for key, r in runs.items():
        assert "error" not in r, (key, r)
        assert r["sampler"] == key.split("_")[0] + ("_ar" if key.startswith("block_ar") else "")
        for field in ("fps", "first_frame_latency_s", "wall_s", "video_seconds", "peak_rss_bytes", "kv_cache_bytes"):
            assert _pos(r[field]), (key, field, r[field])
        assert r["requested_video_seconds"] == float(key.split("_")[-1].rstrip("s"))
        # the dry run caps every stream at 1.5 s of wall time: the cap path is what it checks
        assert r["completed"] is False and r["video_seconds"] < r["requested_video_seconds"]
        assert r["measured"].startswith("the first") and "rollforge bench stream" in r["command"]
        assert len(r["memory_timeline"]) >= 1 and _pos(r["memory_timeline"][0]["peak_rss_bytes"])
        # two samples past the first third of what was streamed are needed (a busy CPU may stream less)
        assert r["memory_flatness"] is None or _pos(r["memory_flatness"]["ratio_last_to_first"])
        assert r["attention_backend"] == "sdpa" and r["dtype"] == "float32"


def test_dmd_step_flops_and_times(report):
    m = report["dmd_step_mfu"]
    assert "error" not in m, m
    gen, crit = m["generator_iteration"], m["critic_iteration"]
    assert gen["stepped_generator"] is True and crit["stepped_generator"] is False
    for part in (gen, crit):
        for field in ("seconds", "flops_executed", "flops_model", "attention_flops", "tokens"):
            assert _pos(part[field]), (field, part[field])
        assert part["flops_model"] <= part["flops_executed"]
    # activation checkpointing re-runs the generator's forward in backward; the critic iteration's
    # flow-matching backward goes through the critic, checkpointed too
    assert m["activation_checkpointing"] is True and gen["flops_recompute"] > 0
    assert gen["flops_model"] > crit["flops_model"]
    assert m["generator_update_only"]["flops_model"] > 0
    # no CUDA: no peak to divide by, and the JSON says so
    assert gen["mfu"] is None and m["mfu_skipped_reason"]
