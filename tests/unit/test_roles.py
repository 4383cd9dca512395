"""Per-role networks: teacher_model.* / critic_model.* resolve, agree with the student, and build."""

from __future__ import annotations

import json

import pytest

from infra.config import load_config
from infra.schema import Config
from pipeline.config import ConfigError
from pipeline.networks.wan_dit import build_dit
from training.roles import check_roles, critic_init, role_model, same_shape, student_init

# The paper's trio (TencentARC/RollingForcing configs/rolling_forcing_dmd.yaml): Wan2.1-T2V-14B real
# score over a 1.3B student and a 1.3B critic; published parameter counts.
WAN_14B = ["teacher_model.dim=5120", "teacher_model.ffn_dim=13824", "teacher_model.num_heads=40",
           "teacher_model.num_layers=40"]


def _params(model_cfg) -> int:
    return sum(p.numel() for p in build_dit(model_cfg, "meta").parameters())


def test_paper_trio_builds_on_meta_with_published_counts():
    cfg = load_config(Config, "configs/wan2.1_t2v_1.3b.yaml", WAN_14B)
    roles = check_roles(cfg)
    assert _params(roles["teacher"]) == 14_288_491_584
    assert _params(roles["student"]) == 1_418_996_800
    assert _params(roles["critic"]) == 1_418_996_800


def test_roles_inherit_the_student_by_default():
    cfg = load_config(Config)
    roles = check_roles(cfg)
    assert same_shape(roles["teacher"], cfg.model) and same_shape(roles["critic"], cfg.model)
    cfg.train.teacher = "/nowhere/teacher"
    assert student_init(cfg, roles) == "/nowhere/teacher"
    assert critic_init(cfg, roles) == "/nowhere/teacher"


def test_teacher_shape_comes_from_its_export_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": {"dim": 128, "num_layers": 4, "weights": "x"}}))
    cfg = load_config(Config, None, [f"train.teacher={tmp_path}"])
    teacher = role_model(cfg, "teacher")
    assert (teacher.dim, teacher.num_layers, teacher.weights) == (128, 4, None)
    # An explicit teacher_model field wins over the export's.
    cfg = load_config(Config, None, [f"train.teacher={tmp_path}", "teacher_model.num_layers=3"])
    assert role_model(cfg, "teacher").num_layers == 3


def test_student_cannot_inherit_a_differently_shaped_teacher(tmp_path):
    cfg = load_config(Config, None, ["teacher_model.dim=128", "train.teacher=/t"])
    roles = check_roles(cfg)
    with pytest.raises(ConfigError, match="train.init_from"):
        student_init(cfg, roles)
    cfg.train.init_from = "/student"
    assert student_init(cfg, roles) == "/student"
    # The critic has the student's shape, so it starts from the student's weights.
    assert critic_init(cfg, roles) == "/student"
    cfg.train.critic_init = "/critic"
    assert critic_init(cfg, roles) == "/critic"


@pytest.mark.parametrize("override,key", [
    ("teacher_model.text_dim=128", "teacher_model.text_dim"),
    ("teacher_model.in_dim=16", "teacher_model.in_dim"),
    ("critic_model.patch_size=[1,1,1]", "critic_model.patch_size"),
    ("critic_model.text_len=16", "critic_model.text_len"),
    ("teacher_model.num_heads=5", "teacher_model.num_heads"),
])
def test_roles_must_agree_on_latents_and_text(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(Config, None, [override])


def test_export_text_width_disagreement_names_the_source(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": {"text_dim": 4096}}))
    with pytest.raises(ConfigError, match="teacher_model.text_dim.*from the teacher export"):
        load_config(Config, None, [f"train.teacher={tmp_path}"])


def test_paper_config_resolves_and_dry_runs_on_meta():
    from infra.dry_run import meta_dry_run

    cfg = load_config(Config, "configs/rolling_forcing_paper.yaml", ["runtime.attention=sdpa"])
    assert cfg.train.teacher_shard and cfg.run.prompts and cfg.run.learners == 64
    result = meta_dry_run(cfg)
    assert result["teacher"]["params"] == 14_288_491_584
    assert result["student"]["params"] == result["critic"]["params"] == 1_418_996_800
    assert result["teacher"]["output"] == [1, 21, 16, 60, 104]
