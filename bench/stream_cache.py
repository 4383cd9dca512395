"""Benchmark: KV-cached rolling sampler vs the cache-free recompute reference, and memory vs length.

Runs `rollforge bench stream` in separate processes (so peak RSS is per run) side by side and
prints one JSON object with the raw results and the ratios the generator issue sets as goals:
    speedup_vs_recompute  = recompute wall / cached wall at --seconds        (goal >= 5)
    rss_ratio_long_short  = peak RSS at --long-seconds / at --seconds         (goal within 2 %)
    kv_cache_bytes_equal  = the cache size does not depend on stream length   (goal true)
Usage: python bench/stream_cache.py [--config configs/tiny.yaml] [--seconds 60] [--long-seconds 600]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path


def bench(config: str, seconds: float, *extra: str) -> dict:
    exe = shutil.which("rollforge") or str(Path(sys.executable).parent / "rollforge")
    cmd = [exe, "bench", "stream", "--config", config, "--seconds", str(seconds), "--json", *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--long-seconds", type=float, default=600.0)
    p.add_argument("--sampler", default="rolling")
    args = p.parse_args()
    s = ["--sampler", args.sampler]
    cached = bench(args.config, args.seconds, *s)
    recompute = bench(args.config, args.seconds, *s, "--recompute")
    long = bench(args.config, args.long_seconds, *s)
    print(json.dumps({
        "config": args.config,
        "sampler": args.sampler,
        "cached": cached,
        "recompute": recompute,
        "cached_long": long,
        "speedup_vs_recompute": recompute["wall_s"] / cached["wall_s"],
        "rss_ratio_long_short": long["peak_rss_bytes"] / cached["peak_rss_bytes"],
        "kv_cache_bytes_equal": long["kv_cache_bytes"] == cached["kv_cache_bytes"],
        "machine": cached["machine"],
    }, indent=2))


if __name__ == "__main__":
    main()
