"""Typed configuration of training (defaults here, once; validated with key-naming errors).

Reference hyper-parameters (Self-Forcing / Rolling Forcing DMD): AdamW, generator lr 1.5e-6, critic
4e-7, betas (0, 0.999), weight decay 0.01, grad clip 10, EMA 0.99 from step 200, teacher CFG 4,
critic updated every step and the generator every 5th. The tiny defaults below train from scratch
on CPU, hence larger learning rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config import ConfigError

from .lr_schedule import DECAYS

STAGES = ("teacher", "ode_init", "distill")
# The reference rolls out 21-27 latent frames over a 21-frame context: up to 2 blocks beyond it.
EXTRA_ROLLOUT_BLOCKS = 2


def _need(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass
class OptimConfig:
    lr: float = 1.0e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1.0e-8
    warmup_steps: int = 0
    decay: str = "constant"  # constant | cosine | linear (training.lr_schedule)
    decay_start: int = 0  # optimizer step the decay starts at
    decay_steps: int = 0  # steps from decay_start to the floor lr * min_lr_ratio
    min_lr_ratio: float = 0.0

    def validate(self, prefix: str) -> None:
        _need(self.lr > 0, f"{prefix}.lr", "must be positive")
        _need(all(0 <= b < 1 for b in self.betas), f"{prefix}.betas", f"each must be in [0, 1), got {self.betas}")
        _need(self.weight_decay >= 0, f"{prefix}.weight_decay", "must be >= 0")
        _need(self.warmup_steps >= 0, f"{prefix}.warmup_steps", "must be >= 0")
        _need(self.eps > 0, f"{prefix}.eps", "must be positive")
        _need(self.decay in DECAYS, f"{prefix}.decay", f"must be one of {DECAYS}, got {self.decay!r}")
        _need(self.decay == "constant" or self.decay_steps > 0, f"{prefix}.decay_steps",
              f"must be > 0 with decay {self.decay!r}")
        _need(self.decay_start >= 0, f"{prefix}.decay_start", "must be >= 0")
        _need(0 <= self.min_lr_ratio <= 1, f"{prefix}.min_lr_ratio", "must be in [0, 1]")


@dataclass
class TrainConfig:
    stage: str = "teacher"  # teacher | ode_init | distill
    max_steps: int = 200
    batch_size: int = 1  # per rank, per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    zero_stage: int = 2  # DeepSpeed ZeRO stage 0-3
    offload_optimizer: bool = False  # ZeRO-Offload of optimizer state to CPU
    activation_checkpointing: bool = False  # per DiT block
    grad_clip: float = 10.0
    generator: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1.0e-4))
    critic: OptimConfig = field(default_factory=lambda: OptimConfig(lr=4.0e-5, betas=(0.0, 0.999)))
    ema_decay: float = 0.99
    ema_start: int = 200  # first step with EMA updates (before: EMA tracks the weights exactly)
    critic_updates_per_generator: int = 5  # DMD two-time-scale: critic every step, generator every Nth
    # Critic-only steps before the first generator step: the critic starts as the teacher, so until it
    # has seen the student's samples (fake - real) is mostly the teacher's CFG direction, not a score gap.
    critic_warmup_steps: int = 0
    p_self_forcing: float = 0.5  # distill: share of block-AR (Self-Forcing) rollouts
    guidance_scale: float = 4.0  # teacher CFG inside the DMD real score
    text_dropout: float = 0.0  # teacher: share of captions replaced by sampler.negative_prompt (CFG's uncond)
    dmd_min_t: float = 20.0  # DMD timestep clamp (after the shift)
    dmd_max_t: float = 980.0
    # Distill rollout length in blocks, drawn uniformly in [min_rollout_blocks, rollout_blocks] each
    # rollout (broadcast from rank 0) and scored on its last context: None/None = the reference's
    # {context, context + 1, context + 2} blocks (Wan: 21, 24, 27 latent frames).
    rollout_blocks: int | None = None  # longest; None = context + 2 blocks
    min_rollout_blocks: int | None = None  # shortest; None = the context (or rollout_blocks if smaller: an error)
    ode_teacher_steps: int = 40  # Euler steps of teacher trajectories for ode_init
    ode_pairs: int = 64  # trajectories generated for ode_init
    teacher: str | None = None  # frozen teacher weights (export dir / safetensors) for ode_init and distill
    init_from: str | None = None  # student init weights (ode_init / distill); None = the teacher's
    critic_init: str | None = None  # DMD critic init weights; None = the teacher's (same shape) or the student's
    # Partition the frozen teacher's parameters across ranks (ZeRO-3, no optimizer) and gather them
    # layer by layer in its forward: a 14B bf16 teacher costs 28.6 GB / world per GPU, not 28.6 GB.
    teacher_shard: bool = False
    checkpoint_every: int = 50
    keep_last: int = 2
    log_every: int = 10
    max_nonfinite: int = 5  # abort after this many non-finite losses in a row
    seed: int = 0

    def validate(self, prefix: str = "train") -> None:
        _need(self.stage in STAGES, f"{prefix}.stage", f"unknown stage {self.stage!r}; valid: {', '.join(STAGES)}")
        for key in ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "keep_last", "log_every",
                    "max_nonfinite", "critic_updates_per_generator", "ode_teacher_steps", "ode_pairs"):
            _need(getattr(self, key) > 0, f"{prefix}.{key}", "must be positive")
        _need(self.zero_stage in (0, 1, 2, 3), f"{prefix}.zero_stage", f"must be 0, 1, 2 or 3, got {self.zero_stage}")
        _need(self.grad_clip >= 0, f"{prefix}.grad_clip", "must be >= 0 (0 disables clipping)")
        _need(0 <= self.ema_decay < 1, f"{prefix}.ema_decay", "must be in [0, 1)")
        _need(self.ema_start >= 0, f"{prefix}.ema_start", "must be >= 0")
        _need(self.critic_warmup_steps >= 0, f"{prefix}.critic_warmup_steps", "must be >= 0")
        _need(self.guidance_scale >= 0, f"{prefix}.guidance_scale", "must be >= 0 (1 = no classifier-free guidance)")
        _need(self.seed >= 0, f"{prefix}.seed", "must be >= 0")
        _need(0 <= self.text_dropout < 1, f"{prefix}.text_dropout", f"must be in [0, 1), got {self.text_dropout}")
        _need(0 <= self.p_self_forcing <= 1, f"{prefix}.p_self_forcing", "must be in [0, 1]")
        _need(0 <= self.dmd_min_t < self.dmd_max_t <= 1000, f"{prefix}.dmd_min_t",
              f"need 0 <= dmd_min_t < dmd_max_t <= 1000, got {self.dmd_min_t}, {self.dmd_max_t}")
        _need(self.rollout_blocks is None or self.rollout_blocks > 0, f"{prefix}.rollout_blocks", "must be positive")
        _need(self.min_rollout_blocks is None or self.min_rollout_blocks > 0, f"{prefix}.min_rollout_blocks",
              "must be positive")
        self.generator.validate(f"{prefix}.generator")
        self.critic.validate(f"{prefix}.critic")

    def rollout_range(self, context_blocks: int, prefix: str = "train") -> tuple[int, int]:
        """(shortest, longest) distill rollout in blocks; both hold the scored context."""
        hi = self.rollout_blocks if self.rollout_blocks is not None else context_blocks + EXTRA_ROLLOUT_BLOCKS
        lo = self.min_rollout_blocks if self.min_rollout_blocks is not None else context_blocks
        _need(hi >= context_blocks, f"{prefix}.rollout_blocks",
              f"{hi} blocks cannot hold the {context_blocks}-block context the DMD loss scores")
        _need(context_blocks <= lo <= hi, f"{prefix}.min_rollout_blocks",
              f"need context ({context_blocks}) <= min_rollout_blocks <= rollout_blocks ({hi}), got {lo}")
        return lo, hi


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str | None = None  # None: sqlite:///<run_dir>/mlflow.db ; or http://127.0.0.1:5000
    experiment: str = "rollforge"
    video_every: int = 0  # log a sample video every N steps (0: only at the end)
    parent_run_id: str | None = None  # nest this run under an MLflow parent run (set by `rollforge run`)

    def validate(self, prefix: str = "tracking") -> None:
        _need(self.video_every >= 0, f"{prefix}.video_every", "must be >= 0")


@dataclass
class RolloutConfig:
    """Decoupled rollout workers (Ray actors) that produce the self-generated histories of `distill`
    and the teacher ODE pairs of `ode_init`; workers = 0 keeps every rollout inside the learner.

    Weights flow learner -> workers every `publish_every` optimizer steps (version = step // M);
    a history made with version v is used at learner version c iff c - v <= max_staleness.
    """

    workers: int = 0  # rollout actors; 0 = rollouts inside the learner (no Ray needed)
    cpus_per_worker: float = 1.0  # Ray logical CPUs per actor (fractional packs several per core)
    gpus_per_worker: float = 0.0  # > 0 runs the worker's student on runtime.device
    queue_size: int = 2  # bounded history queue: full -> workers block (backpressure); keep <= max_staleness + 1
    publish_every: int = 1  # learner publishes the generator's weights every M optimizer steps
    max_staleness: int = 2  # drop histories older than current version - max_staleness (counted)
    # Blocks of history before the learner's scored continuation: fixed, or None = drawn each step
    # like the in-learner rollout length (train.min_rollout_blocks..rollout_blocks minus the context).
    history_blocks: int | None = None
    max_replacements: int = 10  # the pool gives up after replacing this many dead workers
    get_timeout_s: float = 600.0  # learner waiting this long for a history is an error

    def validate(self, prefix: str = "rollouts") -> None:
        _need(self.workers >= 0, f"{prefix}.workers", f"must be >= 0 (0 = rollouts in the learner), got {self.workers}")
        _need(self.cpus_per_worker >= 0, f"{prefix}.cpus_per_worker", f"must be >= 0, got {self.cpus_per_worker}")
        _need(self.gpus_per_worker >= 0, f"{prefix}.gpus_per_worker", f"must be >= 0, got {self.gpus_per_worker}")
        _need(self.cpus_per_worker > 0 or self.gpus_per_worker > 0, f"{prefix}.cpus_per_worker",
              "a worker needs some CPU or GPU (cpus_per_worker and gpus_per_worker are both 0)")
        _need(self.queue_size > 0, f"{prefix}.queue_size", f"must be positive, got {self.queue_size}")
        _need(self.publish_every > 0, f"{prefix}.publish_every", f"must be positive, got {self.publish_every}")
        _need(self.max_staleness >= 0, f"{prefix}.max_staleness", f"must be >= 0, got {self.max_staleness}")
        _need(self.history_blocks is None or self.history_blocks >= 0, f"{prefix}.history_blocks",
              f"must be >= 0 (or null: drawn like the in-learner rollout length), got {self.history_blocks}")
        _need(self.max_replacements >= 0, f"{prefix}.max_replacements", f"must be >= 0, got {self.max_replacements}")
        _need(self.get_timeout_s > 0, f"{prefix}.get_timeout_s", f"must be positive, got {self.get_timeout_s}")

    def history_range(self, train: TrainConfig, context_blocks: int) -> tuple[int, int]:
        """(shortest, longest) history in blocks. Workers generate the longest and keep what a
        learner needs to continue after any length in the range; each step the learner draws one
        length for all ranks (so every rank runs the same forwards) and cuts its histories to it."""
        if self.history_blocks is not None:
            return self.history_blocks, self.history_blocks
        lo, hi = train.rollout_range(context_blocks)
        return lo - context_blocks, hi - context_blocks
