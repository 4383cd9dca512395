"""ODE pairs made by teacher-rollout workers: part files plus one completion marker.

    RUN/ode_pairs/workers_part{i:03d}_of{n:03d}.safetensors    worker i's pairs (`ode.save_pairs`)
    RUN/ode_pairs/workers_pairs.json                           {"parts": [...], "count": total}

The marker is written (atomically) only after every part is complete, so a learner either sees all
parts or none. The names differ from the in-learner per-rank shards (pairs_rank{r}_of{w}).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import Tensor

from .ode import load_pairs

MARKER = "workers_pairs.json"


def part_path(pairs_dir: str | Path, index: int, count: int) -> Path:
    return Path(pairs_dir) / f"workers_part{index:03d}_of{count:03d}.safetensors"


def write_marker(pairs_dir: str | Path, parts: list[Path], total: int) -> Path:
    path = Path(pairs_dir) / MARKER
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"parts": [Path(p).name for p in parts], "count": total}, indent=2))
    os.replace(tmp, path)
    return path


def complete_parts(pairs_dir: str | Path) -> list[Path] | None:
    """The part files listed by a completion marker (None when there is no marker)."""
    marker = Path(pairs_dir) / MARKER
    if not marker.is_file():
        return None
    parts = [Path(pairs_dir) / name for name in json.loads(marker.read_text())["parts"]]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{marker}: lists parts that are gone: {missing}")
    return parts


def load_pair_parts(pairs_dir: str | Path) -> list[dict[str, Tensor]] | None:
    """Every pair of every complete part, in part order (None when the workers have not finished)."""
    parts = complete_parts(pairs_dir)
    return None if parts is None else [pair for p in parts for pair in load_pairs(p)]
