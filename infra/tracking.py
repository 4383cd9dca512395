"""MLflow experiment tracking for the trainer (rank 0 only), which can never kill a run.

    tracker = Tracker(cfg.tracking, run_dir, run_name="teacher", rank=rank)
    tracker.log_params(cfg)                      # dataclass tree or dict -> flattened dotted keys
    tracker.log_metrics({"loss": 0.1}, step=10)
    tracker.close()                              # or: with Tracker(...) as tracker: ...

Default store: `sqlite:///<run_dir>/mlflow.db` with artifacts under `<run_dir>/mlartifacts`; point
`tracking.uri` at a server (http://host:5000) to share one. The run id is kept in
`<run_dir>/mlflow_run_id`, so a resumed training continues the same MLflow run. Everything goes
through `MlflowClient` with explicit run ids (no global "active run"), so a parent and nested
trackers can coexist. Any MLflow failure (server down, bad uri, ...) logs one warning and turns the
tracker into a no-op; training goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from training.config import TrackingConfig

from .config import flatten, to_dict

LOG = logging.getLogger("rollforge.tracking")
# The experiment kind MLflow's UI reads to pick its view (values from MLflow 3's ExperimentKind).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
RUN_ID_FILE = "mlflow_run_id"
MAX_PARAM_VALUE = 500  # MLflow's portable limit (servers before 2.x reject longer param values)
MAX_TAG_VALUE = 5000
BATCH = 100
# Fail fast on an unreachable server instead of MLflow's default retry loop (minutes).
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _batches(items: list, size: int = BATCH):
    for i in range(0, len(items), size):
        yield items[i: i + size]


def store_uri(cfg: TrackingConfig, run_dir: str | Path) -> str:
    """tracking.uri, or the embedded default: a SQLite file in the run dir."""
    return cfg.uri or f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    """The command that browses `uri`, bound to localhost (the UI has no authentication)."""
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1"


def artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database (`mlartifacts/`); a server decides its own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


class Tracker:
    def __init__(self, cfg: TrackingConfig, run_dir: str | Path, run_name: str, rank: int = 0,
                 parent_run_id: str | None = None, tags: dict | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir).resolve()
        self.active = bool(cfg.enabled) and rank == 0
        self.uri: str | None = None
        self._client = None
        self._run_id: str | None = None
        if not self.active:
            return
        for key, value in HTTP_ENV.items():
            os.environ.setdefault(key, value)
        self.uri = store_uri(cfg, self.run_dir)
        self._guard(self._start, run_name, parent_run_id or cfg.parent_run_id, tags or {})

    # ------------------------------------------------------------------ plumbing
    def _guard(self, fn, *args) -> Any:
        """Run one MLflow call; on the first failure warn once and disable the tracker."""
        if not self.active:
            return None
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - tracking must never take the run down
            self.active = False
            LOG.warning("MLflow tracking at %s failed (%s: %s); tracking is disabled for the rest of this run",
                        self.uri, type(e).__name__, _truncate(str(e).strip(), 400))
            return None

    def _start(self, run_name: str, parent_run_id: str | None, tags: dict) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        from .logs import reapply

        reapply()  # MLflow attaches its console handler on import

        self.run_dir.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.uri)
        id_file = self.run_dir / RUN_ID_FILE
        if id_file.is_file():
            run_id = id_file.read_text().strip()
            try:
                client.get_run(run_id)
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                LOG.warning("MLflow run %s from %s is not in %s; starting a new run", run_id, id_file, self.uri)
            else:
                client.update_run(run_id, status="RUNNING")
                self._client, self._run_id = client, run_id
                if tags:
                    self._set_tags(tags)
                return
        exp = client.get_experiment_by_name(self.cfg.experiment)
        if exp is not None:
            exp_id = exp.experiment_id
        else:
            exp_id = client.create_experiment(self.cfg.experiment, artifact_location=artifact_location(self.uri))
        if exp is None or exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            # MLflow 3 opens an untagged experiment in its GenAI view (traces, judges); ours are training runs.
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        all_tags = {k: _truncate(str(v), MAX_TAG_VALUE) for k, v in tags.items()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
        self._client, self._run_id = client, run.info.run_id
        tmp = id_file.with_suffix(".tmp")
        tmp.write_text(self._run_id + "\n")
        tmp.replace(id_file)

    # ------------------------------------------------------------------ API
    @property
    def run_id(self) -> str | None:
        """The MLflow run id, or None while the tracker is disabled."""
        return self._run_id if self.active else None

    def log_params(self, params: Any) -> None:
        """Log a dataclass tree or (nested) dict as flattened dotted keys with string values.

        On a resumed run, keys already logged with the same value are skipped; MLflow forbids
        changing a param, so changed values are skipped with a warning.
        """
        if not self.active:
            return
        data = to_dict(params) if dataclasses.is_dataclass(params) else params
        flat = {k: _truncate(str(v), MAX_PARAM_VALUE) for k, v in flatten(data).items()}
        self._guard(self._log_params, flat)

    def _log_params(self, flat: dict[str, str]) -> None:
        from mlflow.entities import Param

        old = self._client.get_run(self._run_id).data.params
        changed = sorted(k for k in flat if k in old and old[k] != flat[k])
        if changed:
            LOG.warning("MLflow run %s already has different values for %d param(s) (%s); keeping the old ones",
                        self._run_id, len(changed), ", ".join(changed[:5]))
        new = [Param(k, v) for k, v in flat.items() if k not in old]
        for batch in _batches(new):
            self._client.log_batch(self._run_id, params=batch)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log scalars at `step`; NaN/inf (and non-numeric) values are skipped."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = []
        for key, value in metrics.items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                items.append(Metric(key, value, now, int(step)))
        for batch in _batches(items):
            self._guard(self._client.log_batch, self._run_id, batch)

    def set_tags(self, tags: dict) -> None:
        if self.active:
            self._guard(self._set_tags, tags)

    def _set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, _truncate(str(v), MAX_TAG_VALUE)) for k, v in tags.items()]
        for batch in _batches(items):
            self._client.log_batch(self._run_id, tags=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._guard(self._client.log_artifact, self._run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._guard(self._client.log_artifacts, self._run_id, str(directory), artifact_path)

    def register_model(self, name: str, artifact_path: str, tags: dict | None = None) -> str | None:
        """Register this run's artifact directory `artifact_path` as a new version of model `name`;
        returns the version number (None while tracking is disabled)."""
        if not self.active:
            return None
        return self._guard(self._register_model, name, artifact_path, tags or {})

    def _register_model(self, name: str, artifact_path: str, tags: dict) -> str:
        from mlflow.exceptions import MlflowException

        try:
            self._client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{self._client.get_run(self._run_id).info.artifact_uri}/{artifact_path}"
        version = self._client.create_model_version(name, source, run_id=self._run_id,
                                                    tags={k: _truncate(str(v), MAX_TAG_VALUE) for k, v in tags.items()})
        return str(version.version)

    def close(self, status: str = "FINISHED") -> None:
        """End the run (FINISHED | FAILED | KILLED); later calls are no-ops."""
        if self.active:
            self._guard(self._client.set_terminated, self._run_id, status)
        self.active = False

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        self.close(status)
