"""Plain progress lines for a training run whose workers print elsewhere (`rollforge train --ray`).

Rank 0 writes RUN/progress.json (`training.progress`); a thread in the driver reads it and prints a
line whenever the step has moved, at most every `every_s` seconds:

    teacher step 120/4000 (3 %)  loss 0.0812  0.9 s/step  eta 58:12
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from training.progress import read_progress

EVERY_S = 10.0


def format_line(progress: dict, max_steps: int, seconds_per_step: float | None) -> str:
    step, stage = int(progress.get("step", 0)), progress.get("stage", "train")
    line = f"{stage} step {step}/{max_steps} ({100 * step // max(1, max_steps)} %)"
    m = progress.get("metrics", {})
    if m.get("loss_mean") is not None:  # the trainer's mean over the last log_every steps
        line += f"  mean loss {m['loss_mean']:.4g}"
    elif m.get("loss") is not None:
        line += f"  loss {m['loss']:.4g}"
    if seconds_per_step:
        eta = int(seconds_per_step * max(0, max_steps - step))
        line += f"  {seconds_per_step:.2g} s/step  eta {eta // 60}:{eta % 60:02d}"
    return line


class ProgressLines:
    """Context manager: prints `format_line` from RUN/progress.json while the body runs."""

    def __init__(self, run_dir: Path, max_steps: int, every_s: float = EVERY_S, stream=None):
        self.run_dir, self.max_steps, self.every_s = run_dir, max_steps, every_s
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="rollforge-progress")

    def _watch(self) -> None:
        last: tuple[int, float] | None = None
        while not self._stop.wait(self.every_s):
            progress = read_progress(self.run_dir)
            if not progress or (last is not None and progress.get("step") == last[0]):
                continue
            now, step = time.monotonic(), int(progress["step"])
            rate = (now - last[1]) / (step - last[0]) if last is not None and step > last[0] else None
            print(format_line(progress, self.max_steps, rate), file=self.stream, flush=True)
            last = (step, now)

    def __enter__(self) -> ProgressLines:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every_s + 1)
