"""The paper's ablation, small (bench/ablation.py): variants, per-stream numbers, mean ± standard error.

Rolling Forcing's Table 3 removes one ingredient at a time. Here every variant shares the teacher, the
ODE init and the DMD budget; three students are distilled (`rf`: Rolling Forcing rollouts mixed with
Self-Forcing ones as in the reference, `rf_no_sink`: the same without the attention sink,
`sf`: Self-Forcing rollouts only) and each variant streams one of them:

    variant           student     sampler   attention sink
    full              rf          rolling   yes
    no_sink           rf_no_sink  rolling   no  (stream.sink_blocks = 0 in training and at inference)
    no_rf_inference   rf          block_ar  yes
    no_rf_training    sf          rolling   yes
    self_forcing      sf          block_ar  yes

Per stream (one world prompt, one seed), streamed to 10x the training rollout:
    drift                    share of the last third's chunks failing the world checks (lower is better)
    world_chunk_pass_rate    share of all its chunks passing
    luma_max_deviation, similarity_min_to_first, quality_drift   `evaluate.drift_scalars`
    <kind>_failure_rate      share of its chunks failing that kind of check (count, size, colour, motion,
                             spurious): why chunks fail
and per variant the mean and standard error s / sqrt(n) over its streams. The paper's ordering holds
for a variant when full's drift is lower by more than `SE_MARGIN` combined standard errors:
    mean_v - mean_full > 2 sqrt(se_v^2 + se_full^2).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from .world_checks import FAILURE_KINDS

MIN_SECONDS = 10.0  # two non-overlapping 5 s windows of ΔDrift
SE_MARGIN = 2.0
# The reference's Rolling Forcing training mix: p_self_forcing of its DMD rollouts (ARCHITECTURE.md §2)
RF_P_SELF_FORCING = 0.5


@dataclass(frozen=True)
class Variant:
    student: str  # a key of STUDENTS
    sampler: str
    sink: bool
    what: str


@dataclass(frozen=True)
class Student:
    p_self_forcing: float  # train.p_self_forcing of its DMD rollouts
    sink: bool  # trained with the config's attention sink; False: stream.sink_blocks = 0 in training


STUDENTS: dict[str, Student] = {"rf": Student(RF_P_SELF_FORCING, True), "rf_no_sink": Student(RF_P_SELF_FORCING, False),
                                "sf": Student(1.0, True)}
VARIANTS: dict[str, Variant] = {
    "full": Variant("rf", "rolling", True, "Rolling Forcing training, rolling inference, attention sink"),
    "no_sink": Variant("rf_no_sink", "rolling", False, "a Rolling Forcing student trained and streamed without the sink"),
    "no_rf_inference": Variant("rf", "block_ar", True, "the full student sampled block by block"),
    "no_rf_training": Variant("sf", "rolling", True, "a Self-Forcing-trained student (p_self_forcing=1), rolling"),
    "self_forcing": Variant("sf", "block_ar", True, "a Self-Forcing-trained student sampled block by block"),
}
# why chunks fail: per kind of `world_checks.FAILURE_KINDS`, the share of a stream's chunks failing it
FAILURE_METRICS = tuple(f"{kind}_failure_rate" for kind in FAILURE_KINDS)
METRICS = ("drift", "world_chunk_pass_rate", "luma_max_deviation", "similarity_min_to_first", "quality_drift",
           *FAILURE_METRICS)


def training_seconds(rollout_blocks: int, frames_per_block: int, video_frames, fps: float) -> float:
    """Seconds of video in one training rollout: rollout_blocks x frames_per_block latent frames,
    decoded (`video_frames`: the codec's latent -> video frame count), at `fps`."""
    return video_frames(rollout_blocks * frames_per_block) / fps


def longest_rollout(cfg) -> tuple[int, float]:
    """(blocks, seconds of video) of the longest distill rollout of `cfg`: what "10x the training
    rollout" multiplies."""
    s = cfg.stream
    blocks = cfg.train.rollout_range(s.context_blocks)[1]
    return blocks, training_seconds(blocks, s.frames_per_block, cfg.codec.video_frames, cfg.video.fps)


def stream_seconds(train_seconds: float, length_factor: float, minimum: float = MIN_SECONDS) -> float:
    """length_factor x the training length, but at least `minimum` (ΔDrift's windows must not overlap)."""
    if train_seconds <= 0 or length_factor <= 0:
        raise ValueError(f"need positive training length and factor, got {train_seconds}, {length_factor}")
    return max(minimum, length_factor * train_seconds)


def stream_numbers(run: dict) -> dict[str, float | None]:
    """The ablation's numbers of one evaluated stream (a run of `evaluate`, with world and drift)."""
    from .evaluate import drift_scalars  # torch and the metrics: not for the bench's --help
    from .world_checks import chunk_pass_rates

    rates = chunk_pass_rates([run["world"]]) if isinstance(run.get("world"), dict) else {}
    scalars = drift_scalars(run.get("drift") or {})
    failures = rates.get("world_check_failure_rates") or {}
    return {"drift": rates.get("world_drift"), "world_chunk_pass_rate": rates.get("world_chunk_pass_rate"),
            **{k: scalars.get(k) for k in ("luma_max_deviation", "similarity_min_to_first", "quality_drift")},
            **{metric: failures.get(kind) for kind, metric in zip(FAILURE_KINDS, FAILURE_METRICS)}}


def mean_se(values: list[float | None]) -> dict[str, float | int | None]:
    """{"mean", "se", "n"} over the defined values; se = sample std / sqrt(n) (None below 2 values)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return {"mean": None, "se": None, "n": 0}
    se = statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else None
    return {"mean": statistics.fmean(v), "se": se, "n": len(v)}


def summarise(streams: list[dict[str, float | None]]) -> dict[str, dict]:
    """Per metric, mean ± se over a variant's streams (`stream_numbers` of each)."""
    return {m: mean_se([s.get(m) for s in streams]) for m in METRICS}


def ordering(variants: dict[str, dict], metric: str = "drift", reference: str = "full",
             margin: float = SE_MARGIN) -> dict[str, dict]:
    """Per other variant: the gap mean_v - mean_ref, its combined se and whether the gap exceeds
    `margin` combined standard errors (None when undefined)."""
    ref = variants[reference][metric]
    out = {}
    for name, v in variants.items():
        if name == reference:
            continue
        m = v[metric]
        if ref["mean"] is None or m["mean"] is None:
            out[name] = {"gap": None, "combined_se": None, "holds": None}
            continue
        se = math.sqrt((ref["se"] or 0.0) ** 2 + (m["se"] or 0.0) ** 2)
        gap = m["mean"] - ref["mean"]
        out[name] = {"gap": gap, "combined_se": se, "holds": gap > margin * se}
    return out


__all__ = ["FAILURE_METRICS", "METRICS", "MIN_SECONDS", "RF_P_SELF_FORCING", "SE_MARGIN", "STUDENTS", "VARIANTS", "Student", "Variant", "mean_se",
           "longest_rollout", "ordering", "stream_numbers", "stream_seconds", "summarise", "training_seconds"]
