"""`rollforge run`: the whole DAG on a micro config under a local Ray, MLflow parent + nested runs and
a registered model; a rerun skips every stage; a changed setting reruns only its stage and later ones."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from infra.config import load_config, to_dict
from infra.schema import Config
from pipeline.networks.checkpoints import save_weights
from pipeline.networks.wan_dit import build_dit

REPO = Path(__file__).resolve().parents[2]
STAGES = ["shard", "precompute", "teacher", "ode_init", "distill", "evaluate", "export"]
# The micro run starts from a random teacher of its own width, published the way the demo publishes the
# shipped world teacher (training a teacher under Ray Train is tests/integration/test_ray_train.py).
MICRO = ["run.demo.world=4", "run.demo.world_seconds=1.5", "run.ode_init.max_steps=4", "run.ode_init.ode_pairs=2", "run.ode_init.ode_teacher_steps=4",
         "run.distill.max_steps=2", "run.distill.critic_updates_per_generator=2",  # step 2 steps the generator
         "run.evaluate.seconds=1", "run.evaluate.samplers=[rolling]", "run.evaluate.world_prompts=2",
         "train.checkpoint_every=50", "model.dim=64", "model.ffn_dim=128", "model.num_layers=2"]
pytestmark = pytest.mark.slow


def micro_teacher(root: Path) -> Path:
    """A random teacher export (model.safetensors + config.json) with the micro run's model section."""
    cfg = load_config(Config, REPO / "configs/demo.yaml", [o for o in MICRO if o.startswith("model.")])
    save_weights(build_dit(cfg.model, seed=0, zero_head=False), root / "model.safetensors")
    (root / "config.json").write_text(json.dumps({"model": to_dict(cfg.model)}))
    return root


def rollforge_run(run_dir: Path, *overrides: str) -> str:
    exe = shutil.which("rollforge") or str(Path(sys.executable).parent / "rollforge")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    teacher = run_dir.parent / "teacher"
    if not teacher.is_dir():
        micro_teacher(teacher)
    proc = subprocess.run([exe, "run", "--config", "configs/demo.yaml", "--run-dir", str(run_dir), *MICRO,
                           f"run.pretrained_teacher={teacher}", *overrides],
                          capture_output=True, text=True, cwd=REPO, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def status_lines(output: str) -> dict[str, str]:
    """{stage: 'done' | 'skipped'} from the plain per-stage lines the live view prints."""
    out = {}
    for line in output.splitlines():
        head = line.split(" ", 2)
        if len(head) >= 2 and head[0].rstrip(":") in STAGES and head[1] in ("done", "skipped"):
            out[head[0].rstrip(":")] = head[1]
    return out


def runs_by_name(client: MlflowClient) -> dict[str, list]:
    exp = client.get_experiment_by_name("rollforge-demo")
    out: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id]):
        out.setdefault(r.info.run_name, []).append(r)
    return out


def test_pipeline_end_to_end_then_skips_then_reruns_only_what_changed(tmp_path):
    run_dir = tmp_path / "run"
    first = rollforge_run(run_dir)
    assert status_lines(first) == {s: "done" for s in STAGES}
    assert (run_dir / "export/model.safetensors").is_file() and (run_dir / "eval/metrics.json").is_file()
    assert (run_dir / "eval/report.html").is_file() and (run_dir / "eval/plots/quality.png").is_file()
    assert list((run_dir / "eval/videos").glob("rolling_0.mp4"))

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = runs_by_name(client)
    (parent,) = runs["pipeline"]
    assert parent.info.status == "FINISHED" and parent.data.params["run.distill.max_steps"] == "2"
    for stage in STAGES:
        (run,) = runs[stage]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id, stage
        assert run.info.status == "FINISHED", stage
    for stage in ("ode_init", "distill"):
        assert "loss" in runs[stage][0].data.metrics and runs[stage][0].data.params["train.stage"] == stage
    published = run_dir / "teacher/export"
    assert (published / "model.safetensors").read_bytes() == (tmp_path / "teacher/model.safetensors").read_bytes()
    eval_metrics = runs["evaluate"][0].data.metrics
    assert eval_metrics["rolling/fps"] > 0 and 0 < eval_metrics["rolling/flicker"] <= 1
    assert eval_metrics["rolling/quality_drift"] >= 0 and "rolling/frechet_first_last" in eval_metrics
    assert 0 <= eval_metrics["rolling/world_chunk_pass_rate"] <= 1  # 2 world prompts, checked per chunk
    curve = client.get_metric_history(runs["evaluate"][0].info.run_id, "rolling/chunk_world_pass_rate")
    assert sorted(m.step for m in curve) == [0, 1]  # 6 blocks = 18 frames: a 1 s chunk and a partial one
    assert (run_dir / "eval/plots/world_pass_rate.png").is_file() and (run_dir / "eval/plots/strip_rolling.png").is_file()
    assert "report:" in first and "world checks" in first
    # library chatter stays in the run's log files; the console keeps the stage lines (issue 14)
    for chatter in ("PlacementGroupCleaner", "Token authentication", "RayDeprecationWarning", "Progress bars disabled",
                    "RayTrainWorker", "real_accelerator", "streaming_executor", "mlflow.store.db"):
        assert chatter not in first, chatter
    assert (run_dir / "logs/libraries.log").is_file() and "Ray workers: /" in first
    assert runs["shard"][0].data.metrics["videos_ok"] == 4
    export_run = runs["export"][0]
    assert {a.path for a in client.list_artifacts(export_run.info.run_id, "model")} >= {
        "model/model.safetensors", "model/config.json"}
    (version,) = client.search_model_versions("name='rollforge-student'")
    assert version.run_id == export_run.info.run_id and version.source.endswith("/model")
    assert version.tags["stage"] == "distill"

    model_mtime = (run_dir / "export/model.safetensors").stat().st_mtime_ns
    second = rollforge_run(run_dir)
    assert status_lines(second) == {s: "skipped" for s in STAGES}
    assert (run_dir / "export/model.safetensors").stat().st_mtime_ns == model_mtime
    assert sum(len(v) for v in runs_by_name(client).values()) == len(STAGES) + 1  # no new runs
    assert len(client.search_model_versions("name='rollforge-student'")) == 1

    # a changed evaluation setting reruns evaluate and export only (stage fingerprints are one function
    # for every stage: tests/unit/test_dag.py changes a training stage's setting)
    third = rollforge_run(run_dir, "run.evaluate.seconds=2")
    expect = {s: "skipped" for s in STAGES[:5]} | {s: "done" for s in STAGES[5:]}
    assert status_lines(third) == expect
    assert len(client.search_model_versions("name='rollforge-student'")) == 2
    after = runs_by_name(client)
    for stage in STAGES:  # the changed stages started over, each in a fresh nested run
        assert len(after[stage]) == (2 if stage in STAGES[5:] else 1), stage
    (evaluate,) = [r for r in after["evaluate"] if r.info.run_id != runs["evaluate"][0].info.run_id]
    steps = client.get_metric_history(evaluate.info.run_id, "rolling/chunk_world_pass_rate")
    assert sorted(m.step for m in steps) == [0, 1, 2]  # 2 s in whole 3-frame blocks: 33 frames, 3 chunks
