"""`rollforge data ...`: shard videos, precompute latents, build demo datasets, embed prompt sets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli_types import nonneg_int, positive_float, positive_int
from .config import load_config, save_resolved
from .schema import Config

EPILOG = "Overrides: any config key as key.sub=value, e.g. data.shard_size=32 ray.address=auto"


def _load(args: argparse.Namespace) -> Config:
    return load_config(Config, args.config, args.overrides)


def cmd_shard(args: argparse.Namespace) -> int:
    from data.shard import shard_videos

    cfg = _load(args)
    if args.input is None and args.manifest is None:
        raise ValueError("--input FOLDER or --manifest FILE is required")
    out = args.output or cfg.data.shards
    summary = shard_videos(args.input, out, manifest=args.manifest, shard_size=args.shard_size or cfg.data.shard_size,
                           workers=args.workers or cfg.data.workers, missing_caption=cfg.data.missing_caption,
                           ray_cfg=cfg.ray, min_frames=args.min_frames)
    save_resolved(cfg, out)
    skipped = ", ".join(f"{k}={v}" for k, v in sorted(summary["skipped"].items()) if v) or "none"
    print(f"{summary['ok']} videos in {len(summary['shards'])} shards under {out} (skipped: {skipped}); "
          f"details in {Path(out) / 'summary.json'}")
    return 0


def cmd_precompute(args: argparse.Namespace) -> int:
    from data.precompute import precompute

    cfg = _load(args)
    result = precompute(cfg)
    save_resolved(cfg, cfg.data.latents)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from data.demo_clips import collect_demo_clips
    from data.world import write_world_dataset

    cfg = _load(args)
    out = Path(args.out)
    seed = cfg.data.seed if args.seed is None else args.seed
    written = write_world_dataset(out / "world", count=args.world, width=args.world_size, height=args.world_size,
                                  fps=cfg.video.fps, seconds=args.seconds, seed=seed, vocab=args.vocab,
                                  cover=args.cover)
    cover = ", every caption in turn" if args.cover else ""
    print(f"procedural world: {len(written)} videos ({args.vocab} vocabulary{cover}, seed {seed}) with captions and "
          f"ground truth in {out / 'world'}")
    if not args.no_real:
        real = collect_demo_clips(out / "real")
        print(f"real clips: {len(real['collected'])} collected in {out / 'real'}")
        for name, hint in real["missing"].items():
            print(f"  missing {name}: {hint}")
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    from data.prompts import embed_prompts, read_prompts
    from pipeline.networks.text_encoders import build_text_encoder

    cfg = _load(args)
    prompts, counts = read_prompts(args.input)
    if not prompts:
        raise ValueError(f"{args.input}: no prompts found ({counts})")
    from pipeline.generator import resolve_device

    # On the run's device: umT5-XXL on a CPU takes seconds per prompt, on a GPU milliseconds.
    encoder = build_text_encoder(cfg.text, resolve_device(cfg.runtime.device))
    out = embed_prompts(prompts, encoder, args.out, dtype=args.dtype)
    save_resolved(cfg, args.out)
    print(f"{len(prompts)} prompt embeddings in {out} (read: {counts})")
    return 0


def register(sub: argparse._SubParsersAction, add_config_args) -> None:
    d = sub.add_parser("data", help="videos -> shards -> latents; demo datasets; prompt sets")
    dsub = d.add_subparsers(dest="data_command", metavar="STEP", required=True)

    s = dsub.add_parser("shard", help="pack videos + captions into webdataset tar shards", epilog=EPILOG,
                        description="Probe videos (in parallel with Ray), skip and count bad ones by reason, and "
                        "write webdataset shards (KEY.mp4 + KEY.json) atomically; re-runs skip complete shards.")
    add_config_args(s)
    s.add_argument("--input", metavar="PATH", help="folder of videos with sidecar .txt/.json captions")
    s.add_argument("--manifest", metavar="FILE", help="CSV or JSONL with path, caption[, start, end]")
    s.add_argument("--output", metavar="DIR", help="shard folder (default: data.shards)")
    s.add_argument("--shard-size", type=positive_int, help="samples per shard (default: data.shard_size)")
    s.add_argument("--workers", type=positive_int, help="parallel workers (default: data.workers)")
    s.add_argument("--min-frames", type=positive_int, default=1, help="skip videos with fewer frames (default 1)")
    s.set_defaults(func=cmd_shard)

    p = dsub.add_parser("precompute", help="encode shards to latents + text embeddings (Ray Data)", epilog=EPILOG,
                        description="Read data.shards with Ray Data, decode clips, encode them with the configured "
                        "codec and captions with the text encoder, write latent shards to data.latents. "
                        "Resumable and idempotent.")
    add_config_args(p)
    p.set_defaults(func=cmd_precompute)

    m = dsub.add_parser("demo", help="write the procedural world dataset and collect real demo clips",
                        epilog=EPILOG, description="Procedural world videos (moving shapes with known dynamics, "
                        "captions and ground truth) plus real clips shipped by installed packages.")
    add_config_args(m)
    m.add_argument("--out", required=True, metavar="DIR")
    m.add_argument("--world", type=nonneg_int, default=16, help="number of procedural videos (default 16)")
    m.add_argument("--world-size", type=positive_int, default=64, help="procedural video width = height in px (default 64)")
    m.add_argument("--seconds", type=positive_float, default=4.0, help="procedural video length (default 4)")
    m.add_argument("--seed", type=nonneg_int, metavar="S", help="world seed (default: data.seed); another seed draws "
                   "another world set, e.g. prompts a teacher trained on seed 0 has not seen")
    m.add_argument("--vocab", default="full", metavar="NAME",
                   help="what worlds contain: full (3 objects, 8 colours, 3 sizes), laptop (1 object, 4 colours, "
                   "2 sizes; world teacher v2's), laptop_big (laptop with bigger objects; v3's and v4's) or "
                   "laptop_one (laptop_big with one 18 px size, unnamed; the shipped world teacher's) (default full)")
    m.add_argument("--cover", action="store_true",
                   help="cycle the captions through the vocabulary (background, colour, size, kind) in shuffled "
                   "rounds, so that --world of at least their number names every caption (run.demo.world_cover); "
                   "default: every world drawn at random")
    m.add_argument("--no-real", action="store_true", help="skip collecting real clips")
    m.set_defaults(func=cmd_demo)

    q = dsub.add_parser("prompts", help="embed a prompt-only dataset (.txt, .jsonl or .csv) for data.prompts / "
                        "run.prompts", epilog=EPILOG,
                        description="Encode every prompt once with text.* on runtime.device and store the states "
                        "(data/prompts.py layout). Storage: prompts x text.max_length x text_dim values, e.g. "
                        "umT5-XXL at 512 tokens: 4.2 MB per prompt in bfloat16.")
    add_config_args(q)
    q.add_argument("--input", required=True, metavar="FILE")
    q.add_argument("--out", required=True, metavar="DIR")
    q.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="stored precision of the text states (bfloat16 halves the storage)")
    q.set_defaults(func=cmd_prompts)
