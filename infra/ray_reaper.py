"""Ray processes that a killed driver left behind are reaped when the next local Ray starts.

A local Ray started by `ray.init()` lives in the driver's process tree (gcs_server, raylet, and the
raylet's DashboardAgent / RuntimeEnvAgent). On a clean exit `ray.shutdown()` stops them all; after a
SIGKILL of the driver the agents are orphaned and stay alive. So each driver that starts a local Ray
records its Ray processes (pid + start time, so a reused pid is never touched) in a file of its own;
the next local start kills the processes recorded by drivers that no longer exist.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import psutil

LOG = logging.getLogger("rollforge.ray")
REGISTRY_ENV = "ROLLFORGE_RAY_REGISTRY"
KILL_WAIT_S = 5.0


def registry_dir() -> Path:
    """Where drivers record their local Ray processes: $ROLLFORGE_RAY_REGISTRY or TMP/rollforge-ray-UID."""
    path = os.environ.get(REGISTRY_ENV) or Path(tempfile.gettempdir()) / f"rollforge-ray-{os.getuid()}"
    return Path(path)


def _entry(proc: psutil.Process) -> list:
    return [proc.pid, proc.create_time()]


def _is_ray(proc: psutil.Process) -> bool:
    try:
        return "ray" in " ".join(proc.cmdline()).lower()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def record_local_ray() -> Path:
    """Record this driver's Ray processes (its descendants right after `ray.init`)."""
    me = psutil.Process()
    procs = [_entry(p) for p in me.children(recursive=True) if _is_ray(p)]
    path = registry_dir() / f"{me.pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"driver": _entry(me), "processes": procs}))
    tmp.replace(path)
    return path


def forget_local_ray() -> None:
    """A clean shutdown: nothing of ours to reap."""
    (registry_dir() / f"{os.getpid()}.json").unlink(missing_ok=True)


def _alive(pid: int, created: float) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - created) < 1e-3 else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def reap_orphans() -> int:
    """Kill the recorded Ray processes of drivers that are gone; returns how many were still alive."""
    reaped = 0
    for path in sorted(registry_dir().glob("*.json")) if registry_dir().is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if _alive(*record["driver"]) is not None:
            continue  # a live run's Ray
        stray = [p for p in (_alive(*e) for e in record["processes"]) if p is not None]
        for proc in stray:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(stray, timeout=KILL_WAIT_S)
        if stray:
            LOG.warning("stopped %d Ray processes left by a killed run (driver pid %d)", len(stray),
                        record["driver"][0])
        reaped += len(stray)
        path.unlink(missing_ok=True)
    return reaped
