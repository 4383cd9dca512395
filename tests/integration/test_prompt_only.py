"""The paper's recipe at tiny shapes: a teacher twice the student's width and depth, sharded across
2 ranks (ZeRO-3, no optimizer), distilled from a prompt file alone (no videos, no latents)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from infra.config import load_config, to_dict
from infra.schema import Config
from pipeline.networks.checkpoints import save_weights
from pipeline.networks.wan_dit import build_dit
from training.dist import free_port

from conftest import rollforge

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs/tiny.yaml")
pytestmark = pytest.mark.slow
BIG = ["teacher_model.dim=128", "teacher_model.ffn_dim=256", "teacher_model.num_layers=4"]  # 2x width, 2x depth
PROMPTS = ["a red circle moving across a black background", "a green square on gray",
           "a blue circle bouncing", "a yellow square drifting left", "waves on a beach at dusk"]


def test_sharded_teacher_holds_half_and_matches_unsharded():
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).with_name("shard_ranks.py")), TINY, *BIG],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    rows = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    for row in rows:
        assert row["max_diff"] == 0.0
        # ceil(numel / 2) per parameter: half the teacher, up to one padding value per tensor
        assert row["total"] / 2 <= row["local"] <= row["total"] / 2 + 200


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random teacher export of twice the student's width and depth, and a random student init."""
    root = tmp_path_factory.mktemp("weights")
    cfg = load_config(Config, TINY, BIG)
    teacher_cfg = load_config(Config, TINY, [f"model.{k.split('.', 1)[1]}" for k in BIG]).model
    save_weights(build_dit(teacher_cfg, seed=1, zero_head=False), root / "teacher/model.safetensors")
    (root / "teacher/config.json").write_text(json.dumps({"model": to_dict(teacher_cfg)}))
    save_weights(build_dit(cfg.model, seed=2, zero_head=False), root / "student.safetensors")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return root


def test_prompt_only_heterogeneous_sharded_ode_init_and_distill(weights, tmp_path):
    common = ["--config", TINY, "--nproc", "2", f"data.prompts={weights / 'prompts.txt'}",
              f"data.latents={tmp_path / 'no_latents'}", f"train.teacher={weights / 'teacher'}",
              "train.teacher_shard=true", "train.zero_stage=2", "train.log_every=1", "tracking.enabled=false"]
    rollforge("train", *common, "--stage", "ode_init", "--run-dir", str(tmp_path / "ode"), "--max-steps", "2",
              f"train.init_from={weights / 'student.safetensors'}", "train.ode_pairs=4", "train.ode_teacher_steps=3")
    rollforge("export", "--run-dir", str(tmp_path / "ode"), "--out", str(tmp_path / "ode_export"))
    rollforge("train", *common, "--stage", "distill", "--run-dir", str(tmp_path / "dmd"), "--max-steps", "2",
              f"train.init_from={tmp_path / 'ode_export'}", "train.critic_updates_per_generator=1")
    out = rollforge("export", "--run-dir", str(tmp_path / "dmd"), "--out", str(tmp_path / "dmd_export"), "--ema")
    assert out.returncode == 0
    student = load_file(str(tmp_path / "dmd_export/model.safetensors"))
    assert student["blocks.0.self_attn.q.weight"].shape == (64, 64)  # the student's shape, not the teacher's
    assert all(torch.isfinite(v).all() for v in student.values())
    # embedded once per run, from the prompt file alone
    for run in ("ode", "dmd"):
        manifest = json.loads((tmp_path / run / "prompts/prompts/manifest.json").read_text())
        assert manifest["count"] == len(PROMPTS)
    assert not (tmp_path / "no_latents").exists()


def test_student_of_another_shape_needs_its_own_init(weights, tmp_path):
    proc = rollforge("train", "--config", TINY, "--stage", "distill", "--run-dir", str(tmp_path), "--max-steps", "1",
                     f"data.prompts={weights / 'prompts.txt'}", f"train.teacher={weights / 'teacher'}",
                     "tracking.enabled=false", check=False)
    assert proc.returncode == 2 and "train.init_from" in proc.stderr.strip().splitlines()[-1]


def test_run_from_prompts_alone(weights, tmp_path):
    """`rollforge run` with run.prompts: no shard / precompute; the teacher stage publishes the
    pretrained teacher (teacher_model.weights) and the student distils from the prompt file (ode_init
    from prompts is the 2-process test above; one Ray Train stage keeps this test short)."""
    proc = rollforge("run", "--config", TINY, "--run-dir", str(tmp_path), *BIG,
                     f"run.prompts={weights / 'prompts.txt'}", f"teacher_model.weights={weights / 'teacher'}",
                     "run.stages=[shard,precompute,teacher,distill,export]",
                     f"run.distill={{max_steps: 2, critic_updates_per_generator: 1, init_from: "
                     f"{weights / 'student.safetensors'}}}", "run.register_model=null", timeout=600)
    assert proc.returncode == 0
    done = sorted(p.name for p in (tmp_path / "stages").iterdir())
    assert done == ["distill", "export", "teacher"]  # shard and precompute dropped: no videos to read
    assert not (tmp_path / "data").exists()
    teacher = json.loads((tmp_path / "teacher/export/config.json").read_text())["model"]
    assert (teacher["dim"], teacher["num_layers"]) == (128, 4)
    exported = load_file(str(tmp_path / "export/model.safetensors"))
    assert exported["blocks.0.self_attn.q.weight"].shape == (64, 64)
    assert (tmp_path / "distill/prompts/prompts/manifest.json").is_file()  # embedded by the driver, once
