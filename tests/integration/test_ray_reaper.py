"""A local Ray whose driver was SIGKILLed leaves agents behind; the next local start stops them."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from infra.ray_reaper import REGISTRY_ENV, reap_orphans

REPO = Path(__file__).resolve().parents[2]
DRIVER = """
import os, signal
from infra.distributed import RayConfig, init_ray
init_ray(RayConfig(num_cpus=1))
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(entries):
    out = []
    for pid, created in entries:
        try:
            if abs(psutil.Process(pid).create_time() - created) < 1e-3:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_processes_of_a_killed_driver_are_reaped_on_the_next_start(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {REGISTRY_ENV: str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", DRIVER], cwd=REPO, env=env, capture_output=True, timeout=180)
    assert proc.returncode == -9, proc.stderr[-2000:]
    (record,) = tmp_path.glob("*.json")
    entries = json.loads(record.read_text())["processes"]
    assert entries, "the driver recorded its Ray processes"
    time.sleep(2.0)
    left = _alive(entries)
    assert left, "a SIGKILLed driver leaves Ray processes behind (the behaviour this guards against)"
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path))
    assert reap_orphans() == len(left)
    assert _alive(entries) == [] and not record.exists()
    assert reap_orphans() == 0  # nothing recorded is left


def test_a_live_drivers_ray_and_reused_pids_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        entry = [child.pid, psutil.Process(child.pid).create_time()]
        me = psutil.Process()
        (tmp_path / "live.json").write_text(json.dumps({"driver": [me.pid, me.create_time()], "processes": [entry]}))
        # a dead driver whose recorded pid now belongs to another process (other start time)
        (tmp_path / "dead.json").write_text(json.dumps({"driver": [entry[0], 1.0], "processes": [[entry[0], 2.0]]}))
        assert reap_orphans() == 0
        assert child.poll() is None and (tmp_path / "live.json").exists() and not (tmp_path / "dead.json").exists()
    finally:
        child.kill()
        child.wait()
