"""Running means of the losses over the last few steps, for summaries that one step's loss would mislead.

A single step's loss is one batch at one noise level: with x0-prediction over t ~ U(0, 1) it swings by
several times between steps, so "finished at step 300: loss 0.0031" says little about the model. The
trainer logs, reports and prints `<key>_mean`, the mean of `<key>` over the last `size` steps that
logged it (finite values only; a skipped non-finite step does not drag the mean to NaN), for every
loss key (`loss`, `loss/generator`, `loss/critic`, ...). A DMD run logs the generator's loss only on
its generator steps, so its window spans `size` generator steps, not `size` optimizer steps.
"""

from __future__ import annotations

import math
from collections import deque


def is_loss_key(key: str) -> bool:
    return key == "loss" or key.startswith("loss/")


class LossWindow:
    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"window size must be >= 1, got {size}")
        self.size = size
        self._values: dict[str, deque[float]] = {}

    def push(self, logs: dict) -> None:
        """Take the finite loss values of one step's logs."""
        for k, v in logs.items():
            if is_loss_key(k) and isinstance(v, int | float) and math.isfinite(float(v)):
                self._values.setdefault(k, deque(maxlen=self.size)).append(float(v))

    def means(self) -> dict[str, float]:
        """{'<key>_mean': mean over the window} for every loss key seen so far."""
        return {f"{k}_mean": sum(q) / len(q) for k, q in self._values.items() if q}

    def state_dict(self) -> dict:
        return {"values": {k: list(q) for k, q in self._values.items()}}

    def load_state_dict(self, state: dict) -> None:
        self._values = {k: deque(v, maxlen=self.size) for k, v in state.get("values", {}).items()}
