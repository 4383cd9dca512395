"""`rollforge run` logic without running stages: configs per stage, fingerprints, completion records."""

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
    assert t.train.max_steps == cfg.run.teacher["max_steps"] and t.train.teacher is None


@pytest.mark.parametrize("override, key", [
    ("run.distill={max_steps: -1}", "run.distill -> train.max_steps"),
    ("run.teacher={nope: 1}", "run.teacher -> train.nope"),
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


def test_folder_listing_sees_added_and_changed_files(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"1")
    first = folder_listing(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/b.mp4").write_bytes(b"22")
    second = folder_listing(tmp_path)
    assert first != second and [n for n, _, _ in second] == ["a.mp4", "sub/b.mp4"]
    assert folder_listing(None) is None and folder_listing(tmp_path / "missing") == []
