"""Procedural world videos -> webdataset shards -> latent shards, in one call (tests and benchmarks).

The real data path end to end (`write_world_dataset`, `shard_videos`, `precompute`): the videos go
to ROOT/videos, shards to ROOT/shards and latents to ROOT/latents.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .precompute import precompute
from .shard import shard_videos
from .world import write_world_dataset


def world_latents(cfg, root: str | Path, count: int = 4, seconds: float = 1.5, seed: int = 0,
                  shard_size: int = 2, workers: int = 1) -> Path:
    """Encode `count` square world videos at cfg.video's size and fps with cfg's codec and text
    encoder; returns ROOT/latents (cfg itself is not modified)."""
    root = Path(root)
    v = cfg.video
    write_world_dataset(root / "videos", count=count, width=v.width, height=v.height, fps=v.fps, seconds=seconds,
                        seed=seed)
    shard_videos(str(root / "videos"), str(root / "shards"), shard_size=shard_size, workers=workers, progress=False)
    data = dataclasses.replace(cfg.data, shards=str(root / "shards"), latents=str(root / "latents"), workers=workers)
    precompute(dataclasses.replace(cfg, data=data), progress=False)
    return root / "latents"
