"""Learning-rate multiplier per optimizer step: linear warmup, then constant or a decay to a floor.

    f(s) = min(1, (s + 1) / warmup)                                   for s < decay_start
    f(s) = r + (1 - r) * d(min(1, (s - decay_start) / decay_steps))   from decay_start on
    d(u) = (1 + cos(pi u)) / 2  (cosine)   or   1 - u  (linear)

with r = min_lr_ratio. The decay has its own start rather than following `max_steps`, so a run resumed
with a longer `max_steps` keeps the schedule it was trained under, and a constant-rate run can be
resumed into a decay (the shipped world teacher was: docs/BENCHMARKS.md, "World teacher").
"""

from __future__ import annotations

import math

DECAYS = ("constant", "cosine", "linear")


def lr_factor(step: int, warmup_steps: int = 0, decay: str = "constant", decay_start: int = 0,
              decay_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """The multiplier on the base learning rate at optimizer step `step` (0-based)."""
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if decay == "constant" or step < decay_start:
        return warm
    u = min(1.0, (step - decay_start) / max(1, decay_steps))
    shape = (1.0 + math.cos(math.pi * u)) / 2.0 if decay == "cosine" else 1.0 - u
    return warm * (min_lr_ratio + (1.0 - min_lr_ratio) * shape)
