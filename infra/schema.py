"""The root configuration of rollforge: one dataclass tree, defaults = the tiny CPU setup.

Sections are owned by the package that uses them (pipeline.config for the generator); later
stages add theirs here. Load with `infra.config.load_config(Config, path, overrides)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data.config import DataConfig
from pipeline.config import GeneratorConfig
from training.config import RolloutConfig, TrackingConfig, TrainConfig
from training.roles import RoleModelConfig, check_roles

from .distributed import RayConfig
from .run_config import RunConfig


@dataclass
class OutputConfig:
    """Where a command writes when it is not told otherwise."""

    dir: str = "outputs"


@dataclass
class Config(GeneratorConfig):
    # The frozen teacher's and the DMD critic's networks when they differ from the student's (model.*):
    # unset fields inherit (training.roles), e.g. teacher_model.dim=5120 for the paper's 14B real score.
    teacher_model: RoleModelConfig = field(default_factory=RoleModelConfig)
    critic_model: RoleModelConfig = field(default_factory=RoleModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    rollouts: RolloutConfig = field(default_factory=RolloutConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        super().validate()
        self.data.validate("data")
        self.ray.validate("ray")
        self.train.validate("train")
        self.tracking.validate("tracking")
        self.rollouts.validate("rollouts")
        self.run.validate("run")
        self.train.rollout_range(self.stream.context_blocks)
        check_roles(self)

    @property
    def clip_frames(self) -> int:
        """Video frames per training clip: data.clip_frames, or the teacher's context length."""
        if self.data.clip_frames is not None:
            return self.data.clip_frames
        return self.codec.video_frames(self.stream.context_frames)
