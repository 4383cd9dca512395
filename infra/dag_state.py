"""Completion records of `rollforge run` stages: fingerprints and markers (pure file logic).

A stage is *complete* when RUN/stages/<stage>/done.json exists, its fingerprint equals the one
computed now, and every output it lists still exists. Fingerprints chain:

    fp(stage) = sha256(json({stage, settings the stage's outputs depend on, fp(previous stage)}))

so changing a setting reruns that stage and every stage after it, and nothing before it. A stage
that started under a different fingerprint and did not finish leaves `started.json` behind; its
partial outputs are cleared before it runs again (a training run must not resume under another
config), while a restart under the same fingerprint resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from .tracking import RUN_ID_FILE

DONE = "done.json"
STARTED = "started.json"


def fingerprint(stage: str, settings: dict, previous: str | None) -> str:
    blob = json.dumps({"stage": stage, "settings": settings, "previous": previous}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def folder_listing(path: str | Path | None) -> list[tuple[str, int, int]] | None:
    """(relative name, size, mtime_ns) of every file under `path`: input folders enter fingerprints."""
    if path is None:
        return None
    root = Path(path)
    if root.is_file():
        st = root.stat()
        return [(root.name, st.st_size, st.st_mtime_ns)]
    if not root.is_dir():
        return []
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if p.is_file())


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class StageRecord:
    """RUN/stages/<stage>/: started.json, done.json (and the stage's MLflow run id file)."""

    def __init__(self, run_dir: str | Path, stage: str):
        self.stage = stage
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "stages" / stage

    def done(self) -> dict | None:
        return _read_json(self.dir / DONE)

    def is_complete(self, fp: str) -> bool:
        done = self.done()
        return bool(done and done.get("fingerprint") == fp and all(Path(p).exists() for p in done.get("outputs", [])))

    def start(self, fp: str, outputs: list[str | Path]) -> bool:
        """Mark the stage as started under `fp`; returns True when it resumes an attempt with the same
        fingerprint. Outputs of an attempt (finished or not) under another fingerprint are removed: the
        stage's `outputs` in this run dir, and the recorded ones that lie inside it. Recorded paths
        outside it belong to another run (this directory was copied or moved) and are left alone."""
        started = _read_json(self.dir / STARTED) or self.done()
        resumed = bool(started and started.get("fingerprint") == fp)
        if started and not resumed:
            mine = self.run_dir.resolve()
            recorded = [Path(p) for p in started.get("outputs", [])]
            for out in [*map(Path, outputs), *(p for p in recorded if p.resolve().is_relative_to(mine))]:
                _remove(out)
            (self.dir / RUN_ID_FILE).unlink(missing_ok=True)  # a new attempt gets its own MLflow run
        (self.dir / DONE).unlink(missing_ok=True)
        _write_json(self.dir / STARTED, {"stage": self.stage, "fingerprint": fp, "started_at": time.time(),
                                         "outputs": [str(p) for p in outputs]})
        return resumed

    def finish(self, fp: str, outputs: list[str | Path], info: dict) -> dict:
        record = {"stage": self.stage, "fingerprint": fp, "finished_at": time.time(),
                  "outputs": [str(p) for p in outputs], **info}
        _write_json(self.dir / DONE, record)
        (self.dir / STARTED).unlink(missing_ok=True)
        return record


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
