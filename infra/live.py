"""The rich live view of `rollforge run`: one row per stage, with the running stage's step, loss
and throughput read from its training run's progress.json (written by rank 0 of the learners).

Without a terminal (CI, `| tee`) rich prints nothing live; every stage transition is also
printed as one plain line, so logs stay readable.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from training.progress import read_progress

STYLE = {"pending": "dim", "running": "bold yellow", "done": "green", "skipped": "cyan", "failed": "bold red"}
REFRESH_S = 0.5


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


class LiveView:
    def __init__(self, stages: list[str], run_dir: Path, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.run_dir = run_dir
        self.rows = {s: {"status": "pending", "detail": "", "start": None, "took": None} for s in stages}
        self.progress_dir: Path | None = None  # the running training stage's run dir
        self._lock = threading.Lock()
        self._live = Live(self._render(), console=self.console, refresh_per_second=1 / REFRESH_S,
                          transient=False, get_renderable=self._render)

    # ------------------------------------------------------------------ rendering
    def _train_detail(self) -> str:
        p = read_progress(self.progress_dir) if self.progress_dir else None
        if not p:
            return ""
        m = p.get("metrics", {})
        parts = [f"step {p['step']}/{p['max_steps']}"]
        if "loss_mean" in m:
            parts.append(f"mean loss {m['loss_mean']:.4f}")
        elif "loss" in m:
            parts.append(f"loss {m['loss']:.4f}")
        if "tokens_per_s" in m:
            parts.append(f"{m['tokens_per_s']:,.0f} tok/s")
        if "rollout/staleness" in m:
            parts.append(f"staleness {m['rollout/staleness']:.1f}")
        return "  ".join(parts)

    def _render(self) -> Table:
        table = Table(title=f"rollforge run  {self.run_dir}", expand=False)
        for col in ("stage", "status", "time", "detail"):
            table.add_column(col)
        now = time.time()
        with self._lock:
            for stage, row in self.rows.items():
                took = row["took"] if row["took"] is not None else (now - row["start"] if row["start"] else None)
                detail = row["detail"]
                if row["status"] == "running" and self.progress_dir is not None:
                    detail = self._train_detail() or detail
                table.add_row(stage, f"[{STYLE[row['status']]}]{row['status']}", _fmt_s(took) if took else "",
                              detail)
        return table

    # ------------------------------------------------------------------ updates
    def set(self, stage: str, status: str, detail: str = "", progress_dir: Path | None = None) -> None:
        with self._lock:
            row = self.rows[stage]
            if status == "running" and row["start"] is None:
                row["start"] = time.time()
            if status in ("done", "failed") and row["start"] is not None:
                row["took"] = time.time() - row["start"]
            row["status"], row["detail"] = status, detail
            self.progress_dir = progress_dir if status == "running" else None
        if status != "running" or not detail:
            took = self.rows[stage]["took"]
            suffix = f" in {_fmt_s(took)}" if took else ""
            self.console.print(f"[{STYLE[status]}]{stage}: {status}{suffix}[/] {detail}", highlight=False)

    def status(self, stage: str, detail: str) -> None:
        with self._lock:
            self.rows[stage]["detail"] = detail

    def __enter__(self) -> LiveView:
        if self.console.is_terminal:
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.console.is_terminal:
            self._live.stop()
