"""`rollforge train --nproc N` on one machine: N rank processes of the same command, without torchrun.

Each rank gets the environment torchrun would give it (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR=127.0.0.1, a free MASTER_PORT) and inherits the console, so rank 0's live view stays live.
The first rank to fail stops the others (a peer blocked in a collective would wait forever); the
launcher then prints that rank's own error line last and exits with its code - not torchrun's
ChildFailedError traceback after it. Ranks report their error line through `ERROR_FILE_ENV`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ERROR_FILE_ENV = "ROLLFORGE_ERROR_FILE"
POLL_S = 0.2
STOP_GRACE_S = 20.0


def report_error(message: str) -> None:
    """A CLI's clear one-line error: printed, or under the launcher handed to it to print once, last."""
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        Path(path).write_text(message + "\n")
    else:
        print(message, file=sys.stderr)


def _stop(procs: list[subprocess.Popen]) -> None:
    live = [p for p in procs if p.poll() is None]
    for p in live:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in live:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch_ranks(args: list[str], nproc: int) -> int:
    """Run `python -m infra.cli ARGS` as `nproc` ranks; returns 0, or the first failing rank's exit code."""
    from training.dist import free_port

    port = str(free_port())
    threads = str(max(1, (os.cpu_count() or 1) // nproc))
    with tempfile.TemporaryDirectory(prefix="rollforge-ranks-") as tmp:
        procs = []
        for rank in range(nproc):
            env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                   "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                   ERROR_FILE_ENV: str(Path(tmp) / f"rank{rank}.err")}
            env.setdefault("OMP_NUM_THREADS", threads)  # N ranks share the cores, as under torchrun
            procs.append(subprocess.Popen([sys.executable, "-m", "infra.cli", *args], env=env))
        try:
            while True:
                running = [p.poll() is None for p in procs]  # poll() sets returncode
                failed = next(((r, p.returncode) for r, p in enumerate(procs) if p.returncode), None)
                if failed is not None or not any(running):
                    break
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            _stop(procs)
            return 130
        if failed is None:
            return 0
        _stop(procs)
        rank, code = failed
        errors = [Path(tmp) / f"rank{r}.err" for r in [rank, *range(nproc)]]
        message = next((e.read_text().strip() for e in errors if e.is_file()), None)
        print(message or f"rollforge: rank {rank} of {nproc} failed (exit code {code}); its output is above",
              file=sys.stderr)
        return code if code > 0 else 1
