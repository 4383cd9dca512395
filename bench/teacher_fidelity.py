"""Benchmark: is a teacher good enough to distil? Denoising error by noise level on its training
clips, and its samples' frame statistics against the data's (evaluation.teacher_fidelity).

Usage: python bench/teacher_fidelity.py --config CFG [--checkpoint TEACHER_EXPORT] --latents RUN/data/latents
           [--clips 8] [--sigmas 0.1,0.3,0.6,0.9,1.0] [key.sub=value ...]
Prints one JSON object. Read it as: x0_rel_error near 1 at sigma >= 0.9 means the teacher cannot yet
place anything from noise; sample_over_data well above 1 means its samples carry noise or texture
the data does not have. A teacher worth distilling has both close to the data's.
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the teacher's config (geometry, stream, sampler)")
    p.add_argument("--checkpoint", help="the teacher's export dir; without it, seeded random weights "
                   "(the untrained baseline every score should beat)")
    p.add_argument("--latents", required=True, help="latent shards (RUN/data/latents)")
    p.add_argument("--clips", type=int, default=8, help="data clips to score (default 8)")
    p.add_argument("--sigmas", default="0.1,0.3,0.6,0.9,1.0", help="noise levels in (0, 1], comma-separated")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = p.parse_args(argv)

    from evaluation.teacher_fidelity import teacher_fidelity
    from evaluation.throughput import machine_info
    from infra.config import load_config
    from infra.schema import Config

    if args.clips < 1:
        p.error("--clips must be positive")
    cfg = load_config(Config, args.config, args.overrides)
    sigmas = [float(v) for v in args.sigmas.split(",") if v.strip()]
    result = teacher_fidelity(cfg, args.checkpoint, args.latents, args.clips, sigmas)
    result = {"bench": "teacher_fidelity", "checkpoint": args.checkpoint, "config": args.config,
              "overrides": args.overrides, **result, "machine": machine_info()}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
