"""Library chatter goes to a log file in the run directory; the console keeps rollforge's own lines.

Ray, Ray Data / Train, MLflow, DeepSpeed and Python warnings log to console handlers of their own,
some attached only when first used (DeepSpeed's and Ray Data's on import, Ray's on `ray.init`).
`route_library_logs(DIR)` puts a filter on each library logger and on its console handlers: every
record is written to DIR/logs/libraries.log, and only records at ERROR or above go on to the console
(a real failure is never hidden). A filter on a logger outlives the handlers a library attaches to it
later; one on a handler also catches the records of child loggers created later (Ray Data creates its
executor's on first use). `reapply()`, called after Ray starts and after Ray Data is imported,
covers the loggers and handlers created since. Worker processes' output stays in Ray's session logs
(`ray.log_to_driver: false`, the default); `ray_log_dir()` says where.
"""

from __future__ import annotations

import logging
from pathlib import Path

LIBRARIES = ("ray", "mlflow", "alembic", "deepspeed", "DeepSpeed", "torch", "py.warnings", "urllib3", "filelock",
             "transformers", "huggingface_hub", "webdataset")
LOG_FILE = "libraries.log"


class _ToFile(logging.Filter):
    """On a logger or a console handler: the record goes to the file (once); only errors pass on."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_rollforge_filed", False):
            record._rollforge_filed = True
            self.handler.handle(record)
        return record.levelno >= logging.ERROR


class _Route:
    path: Path | None = None
    filter: _ToFile | None = None


def _library_loggers() -> list[logging.Logger]:
    """The top-level library loggers and every child of one that exists so far."""
    names = {n for n in list(logging.Logger.manager.loggerDict)
             if any(n == lib or n.startswith(lib + ".") for lib in LIBRARIES)}
    return [logging.getLogger(n) for n in set(LIBRARIES) | names]


def reapply() -> None:
    """Filter the library loggers created since `route_library_logs`; no-op when not routed."""
    if _Route.filter is None:
        return
    for logger in _library_loggers():
        # On the logger for records logged there; on its console handlers for records that a child
        # created later propagates up to them (a logger's filters only see its own records).
        consoles = [h for h in logger.handlers
                    if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
        for target in (logger, *consoles):
            for old in [f for f in target.filters if isinstance(f, _ToFile) and f is not _Route.filter]:
                target.removeFilter(old)
            if _Route.filter not in target.filters:
                target.addFilter(_Route.filter)


def route_library_logs(run_dir: str | Path) -> Path:
    """Send library log records and Python warnings to RUN_DIR/logs/libraries.log; returns its path."""
    path = (Path(run_dir) / "logs" / LOG_FILE).resolve()
    if _Route.path != path:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        _Route.path, _Route.filter = path, _ToFile(handler)
        logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger
    reapply()
    return path


def unroute() -> None:
    """Undo `route_library_logs` (library records reach their own handlers again)."""
    if _Route.filter is not None:
        for logger in _library_loggers():
            for target in (logger, *logger.handlers):
                target.removeFilter(_Route.filter)
        _Route.filter.handler.close()
    _Route.path, _Route.filter = None, None
    logging.captureWarnings(False)


def ray_log_dir() -> str | None:
    """This process's Ray session log folder (worker output lives there), or None without Ray."""
    try:
        import ray

        if ray.is_initialized():
            return str(Path(ray._private.worker._global_node.get_session_dir_path()) / "logs")
    except Exception:  # noqa: BLE001 - only a hint for the user
        return None
    return None
