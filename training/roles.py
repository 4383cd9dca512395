"""Per-role networks: the student (`model.*`), the frozen teacher (`teacher_model.*`), the DMD critic
(`critic_model.*`).

The paper distils a frozen Wan2.1-T2V-14B real score into a 1.3B student with a 1.3B critic
(TencentARC/RollingForcing `configs/rolling_forcing_dmd.yaml`: `real_name: Wan2.1-T2V-14B`,
`fake_name: Wan2.1-T2V-1.3B`). Each role's shape resolves, field by field, as

    teacher = model.*  <-  the teacher export's config.json `model` section  <-  teacher_model.*
    critic  = model.*  <-  critic_model.*

(`<-`: later wins; a `None` field inherits), so a user rarely writes either section. The roles read
one latent (`in_dim`, `out_dim`, `patch_size`) and one text encoding (`text_dim`, `text_len`): those
must agree with the student's, else one ConfigError naming the role's key.

Initial weights: the student loads `train.init_from`, else the teacher's weights (only when the
shapes are equal); the critic loads `train.critic_init`, else the teacher's weights when it has
the teacher's shape, else the student's initial weights.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

from pipeline.config import ConfigError, ModelConfig

ROLES = ("student", "teacher", "critic")
# What every role must share with the student: the latent it reads and writes, and the text states.
SHARED_FIELDS = ("in_dim", "out_dim", "patch_size", "text_dim", "text_len")
# Fields that set the network's shape (what a state dict must match; `prediction` and `weights` do not).
SHAPE_FIELDS = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "patch_size", "text_dim",
                "text_len", "freq_dim", "qk_norm", "cross_attn_norm")


def _optional(tp):
    return tp if type(None) in typing.get_args(tp) else tp | None


_HINTS = typing.get_type_hints(ModelConfig)
# Every `model.*` field, each optional (None = inherit): teacher_model.num_layers=40 changes only that.
RoleModelConfig = dataclasses.make_dataclass(
    "RoleModelConfig",
    [(f.name, _optional(_HINTS[f.name]), dataclasses.field(default=None)) for f in dataclasses.fields(ModelConfig)],
)
RoleModelConfig.__doc__ = "A role's `model.*` overrides; None inherits (see training.roles)."


def set_fields(cfg) -> dict:
    """The fields a RoleModelConfig sets explicitly."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if getattr(cfg, f.name) is not None}


def export_model_section(path: str | Path | None) -> dict:
    """The `model` section of an export directory's config.json ({} for a bare weights file or no path)."""
    if not path:
        return {}
    meta = Path(path) / "config.json"
    if not meta.is_file():
        return {}
    try:
        return dict(json.loads(meta.read_text()).get("model", {}))
    except (json.JSONDecodeError, AttributeError) as e:
        raise ConfigError(f"train.teacher: {meta} is not a valid export config.json: {e}") from None


def _overlay(base: ModelConfig, values: dict) -> ModelConfig:
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    clean = {k: (tuple(v) if k == "patch_size" else v) for k, v in values.items() if k in names and k != "weights"}
    return dataclasses.replace(base, **clean)


def role_model(cfg, role: str, teacher_path: str | Path | None = None) -> ModelConfig:
    """The ModelConfig of `role` (student | teacher | critic); `teacher_path` defaults to train.teacher."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; valid: {', '.join(ROLES)}")
    if role == "student":
        return cfg.model
    base = dataclasses.replace(cfg.model, weights=None)
    explicit = set_fields(getattr(cfg, f"{role}_model"))
    if role == "teacher":
        saved = export_model_section(teacher_path if teacher_path is not None else cfg.train.teacher)
        base = _overlay(base, saved)
    out = _overlay(base, explicit)
    if explicit.get("weights"):
        out = dataclasses.replace(out, weights=explicit["weights"])
    return out


def check_roles(cfg, teacher_path: str | Path | None = None) -> dict[str, ModelConfig]:
    """Resolve and validate every role: its own rules, then agreement with the student."""
    out = {}
    for role in ROLES:
        model = role_model(cfg, role, teacher_path)
        prefix = "model" if role == "student" else f"{role}_model"
        model.validate(prefix)
        for name in SHARED_FIELDS:
            mine, student = getattr(model, name), getattr(cfg.model, name)
            if _norm(mine) != _norm(student):
                source = "" if name in set_fields(getattr(cfg, f"{role}_model")) else " (from the teacher export)"
                raise ConfigError(f"{prefix}.{name}: the {role}'s {name} {_norm(mine)}{source} must equal the "
                                  f"student's model.{name} {_norm(student)}: every role reads the same latents "
                                  "and text states")
        out[role] = model
    return out


def _norm(v):
    return tuple(v) if isinstance(v, list | tuple) else v


def same_shape(a: ModelConfig, b: ModelConfig) -> bool:
    """Whether a state dict of one loads into the other (prediction and weights aside)."""
    return all(_norm(getattr(a, k)) == _norm(getattr(b, k)) for k in SHAPE_FIELDS)


def student_init(cfg, roles: dict[str, ModelConfig]) -> str | None:
    """The student's initial weights: train.init_from, else the teacher's when the shapes are equal."""
    tr = cfg.train
    if tr.init_from:
        return tr.init_from
    if tr.teacher and not same_shape(roles["student"], roles["teacher"]):
        raise ConfigError(f"train.init_from: the student (model.*: dim {cfg.model.dim}, {cfg.model.num_layers} "
                          f"layers) has another shape than the teacher (dim {roles['teacher'].dim}, "
                          f"{roles['teacher'].num_layers} layers), so it cannot start from the teacher's "
                          "weights; give the student's initial weights (an ODE-init export, Wan2.1-1.3B)")
    return tr.teacher


def critic_init(cfg, roles: dict[str, ModelConfig]) -> str | None:
    """The critic's initial weights: train.critic_init, else the teacher's (same shape) or the student's."""
    tr = cfg.train
    if tr.critic_init:
        return tr.critic_init
    if same_shape(roles["critic"], roles["teacher"]):
        return tr.teacher
    if same_shape(roles["critic"], roles["student"]):
        return student_init(cfg, roles)
    raise ConfigError("train.critic_init: the critic (critic_model.*) has neither the teacher's nor the student's "
                      "shape; give its initial weights")
