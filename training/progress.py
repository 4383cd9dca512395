"""A live progress file a training run keeps up to date: RUN_DIR/progress.json (rank 0 only).

    {"stage": "distill", "step": 120, "max_steps": 400, "time": 1732280000.0,
     "metrics": {"loss": 0.41, "tokens_per_s": 4500.0, ...}}

Written atomically (temp file + rename) at most every `MIN_INTERVAL_S` and at every log step, so a
watcher in another process (the `rollforge run` live view, a Ray driver) can show step, losses and
throughput without talking to the learners.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

PROGRESS_NAME = "progress.json"
MIN_INTERVAL_S = 0.5


class ProgressFile:
    def __init__(self, run_dir: str | Path, stage: str, max_steps: int, enabled: bool = True):
        self.path = Path(run_dir) / PROGRESS_NAME
        self.stage, self.max_steps, self.enabled = stage, max_steps, enabled
        self.metrics: dict[str, float] = {}
        self._last = 0.0

    def update(self, step: int, metrics: dict | None = None, force: bool = False) -> None:
        """Record `step` (and merge new scalar metrics); writes when forced or MIN_INTERVAL_S passed."""
        if not self.enabled:
            return
        if metrics:
            self.metrics.update({k: float(v) for k, v in metrics.items()
                                 if isinstance(v, int | float) and math.isfinite(float(v))})
        now = time.time()
        if not force and now - self._last < MIN_INTERVAL_S:
            return
        self._last = now
        payload = {"stage": self.stage, "step": step, "max_steps": self.max_steps, "time": now, "metrics": self.metrics}
        tmp = self.path.with_name(f".{PROGRESS_NAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(self.path)


def read_progress(run_dir: str | Path) -> dict | None:
    """The last progress record of a run, or None when there is none (yet) or it is unreadable."""
    try:
        return json.loads((Path(run_dir) / PROGRESS_NAME).read_text())
    except (OSError, ValueError):
        return None
