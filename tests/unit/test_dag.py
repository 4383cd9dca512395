"""`rollforge run` logic without running stages: configs per stage, fingerprints, completion records."""

import shutil
from pathlib import Path

import pytest

from infra.config import load_config
from infra.dag import plan
from infra.dag_state import StageRecord, fingerprint, folder_listing
from infra.schema import Config
from infra.stages import stage_config
from pipeline.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs/demo.yaml")


def test_stage_config_merges_run_section_into_train(tmp_path):
    cfg = load_config(Config, DEMO, ["run.distill={max_steps: 7, generator.lr: 0.5, critic: {lr: 0.25}}"])
    d = stage_config(cfg, tmp_path, "distill", parent_run_id="abc")
    assert (d.train.stage, d.train.max_steps, d.train.generator.lr, d.train.critic.lr) == ("distill", 7, 0.5, 0.25)
    assert d.train.teacher == str(tmp_path / "teacher/export")  # upstream exports of this run
    assert d.train.init_from == str(tmp_path / "ode_init/export")
    assert d.tracking.parent_run_id == "abc"
    t = stage_config(cfg, tmp_path, "teacher")
    assert t.train.max_steps == cfg.train.max_steps and t.train.teacher is None


@pytest.mark.parametrize("override, key", [
    ("run.distill={max_steps: -1}", "run.distill -> train.max_steps"),
    ("run.distill={nope: 1}", "run.distill -> train.nope"),
    ("run.teacher={max_steps: 5}", "run.pretrained_teacher"),  # the demo publishes a pretrained teacher
    ("run.ode_init={stage: teacher}", "run.ode_init.stage"),
    ("run.stages=[teacher, shard]", "run.stages"),
    ("run.stages=[shard, bake]", "run.stages"),
    ("run.evaluate.samplers=[fast]", "run.evaluate.samplers"),
    ("run.videos=/data", "run.videos"),  # demo data and videos are exclusive
    ("run.learners=0", "run.learners"),
])
def test_bad_run_settings_name_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError) as e:
        cfg = load_config(Config, DEMO, [override])
        stage_config(cfg, tmp_path, "distill")
        stage_config(cfg, tmp_path, "teacher")
    assert str(e.value).startswith(key), str(e.value)


def test_teacher_evaluated_beyond_its_context_is_refused_before_running(tmp_path):
    cfg = load_config(Config, DEMO, ["run.evaluate.samplers=[rolling, bidirectional]", "run.evaluate.seconds=30"])
    with pytest.raises(ConfigError, match="bidirectional"):
        plan(cfg, tmp_path)


def test_distill_without_a_teacher_is_refused(tmp_path):
    cfg = load_config(Config, DEMO, ["run.stages=[distill, export]"])
    with pytest.raises(ConfigError, match="needs a teacher"):
        stage_config(cfg, tmp_path, "distill")


def test_fingerprints_chain_so_a_change_reruns_that_stage_and_later_ones(tmp_path):
    base = plan(load_config(Config, DEMO), tmp_path)
    changed = plan(load_config(Config, DEMO, ["run.ode_init.max_steps=3"]), tmp_path)
    same = [a[1] == b[1] for a, b in zip(base, changed)]
    stages = [s for s, _, _ in base]
    assert same == [s in ("shard", "precompute", "teacher") for s in stages]
    # execution settings (where MLflow lives, how Ray runs) do not invalidate anything
    moved = plan(load_config(Config, DEMO, ["tracking.experiment=other", "ray.num_cpus=1"]), tmp_path)
    assert [a[1] for a in base] == [b[1] for b in moved]
    assert fingerprint("x", {"a": 1}, None) != fingerprint("x", {"a": 1}, "prev")
    # rollout workers change how distillation runs, never the teacher
    workers = plan(load_config(Config, DEMO, ["rollouts.workers=2"]), tmp_path)
    assert [a[1] == b[1] for a, b in zip(base, workers)] == [s in ("shard", "precompute", "teacher") for s in stages]


def test_stage_record_complete_only_with_same_fingerprint_and_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    rec = StageRecord(tmp_path, "teacher")
    assert not rec.is_complete("fp1")
    assert rec.start("fp1", [out]) is False
    assert not rec.is_complete("fp1")  # started, not finished
    rec.finish("fp1", [out], {"metrics": {"loss": 1.0}})
    assert rec.is_complete("fp1") and not rec.is_complete("fp2")
    out.rmdir()
    assert not rec.is_complete("fp1")  # outputs gone: run it again


def test_stage_record_resumes_same_config_and_clears_another(tmp_path):
    out = tmp_path / "train"
    (out / "checkpoints").mkdir(parents=True)
    rec = StageRecord(tmp_path, "distill")
    rec.start("fp1", [out])
    assert rec.start("fp1", [out]) is True and (out / "checkpoints").is_dir()  # interrupted: resume
    assert rec.start("fp2", [out]) is False and not out.exists()  # other config: start over


def test_a_copied_run_dir_starting_over_never_touches_the_original(tmp_path):
    """Branching an experiment by copying a run dir, then changing a setting: the copy's record lists
    the original's paths; starting over clears the copy's own outputs and leaves the original's."""
    orig, copy = tmp_path / "orig", tmp_path / "copy"
    (orig / "distill" / "checkpoints").mkdir(parents=True)
    rec = StageRecord(orig, "distill")
    rec.start("fp1", [orig / "distill"])
    rec.finish("fp1", [orig / "distill"], {})
    shutil.copytree(orig, copy)
    assert StageRecord(copy, "distill").start("fp2", [copy / "distill"]) is False
    assert (orig / "distill" / "checkpoints").is_dir() and rec.is_complete("fp1")
    assert not (copy / "distill").exists()  # no stale checkpoint to resume under the new config


def test_folder_listing_sees_added_and_changed_files(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"1")
    first = folder_listing(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/b.mp4").write_bytes(b"22")
    second = folder_listing(tmp_path)
    assert first != second and [n for n, _, _ in second] == ["a.mp4", "sub/b.mp4"]
    assert folder_listing(None) is None and folder_listing(tmp_path / "missing") == []


def _tiny_export(folder: Path, cfg) -> Path:
    import json
    from dataclasses import asdict

    from pipeline.networks.checkpoints import save_weights
    from pipeline.networks.wan_dit import build_dit

    save_weights(build_dit(cfg.model), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model": asdict(cfg.model)}))
    return folder


def test_pretrained_teacher_is_published_as_the_runs_teacher(tmp_path):
    """run.pretrained_teacher: the teacher stage copies the export to RUN/teacher/export (no training),
    the downstream stages read it from there, and its files enter the stage's fingerprint."""
    from infra.stages import StageContext, run_train, settings

    tiny = str(REPO / "configs/tiny.yaml")
    src = _tiny_export(tmp_path / "shipped", load_config(Config, tiny))
    cfg = load_config(Config, tiny, [f"run.pretrained_teacher={src}", "tracking.enabled=false"])
    run = tmp_path / "run"
    result = run_train(StageContext(cfg, run, None), "teacher")
    out = run / "teacher" / "export"
    assert result["info"] == {"export": str(out), "pretrained": str(src), "mlflow_run_id": None}
    assert (out / "model.safetensors").read_bytes() == (src / "model.safetensors").read_bytes()
    assert stage_config(cfg, run, "ode_init").train.teacher == str(out)
    assert settings(cfg, "teacher")["pretrained_teacher"] == folder_listing(src)
    other = load_config(Config, tiny, [f"run.pretrained_teacher={src}", "tracking.enabled=false", "model.num_layers=3"])
    with pytest.raises(ConfigError, match=r"run.pretrained_teacher: model.num_layers"):
        run_train(StageContext(other, tmp_path / "run2", None), "teacher")
    missing = load_config(Config, tiny, [f"run.pretrained_teacher={tmp_path / 'nope'}", "tracking.enabled=false"])
    with pytest.raises(FileNotFoundError, match="run.pretrained_teacher"):
        run_train(StageContext(missing, tmp_path / "run3", None), "teacher")
    with pytest.raises(ConfigError, match="run.pretrained_teacher"):
        load_config(Config, tiny, [f"run.pretrained_teacher={src}", "run.teacher={max_steps: 5}"])
