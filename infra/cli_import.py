"""`rollforge import`: Rolling Forcing / Self-Forcing .pt files and diffusers folders -> an export dir."""

from __future__ import annotations

import argparse

from .cli_types import positive_int
from .config import load_config
from .schema import Config

EPILOG = ("The weights fix the model's shape; the other sections (video, codec, text, stream, sampler) and "
          "text_len/rope_theta/prediction come from --config and key.sub=value overrides, e.g. "
          "--config configs/wan2.1_t2v_1.3b_distill.yaml")
SOURCES = ("rolling-forcing", "self-forcing", "diffusers")


def cmd_import(args: argparse.Namespace) -> int:
    from training.importer import import_checkpoint

    cfg = load_config(Config, args.config, args.overrides)
    out = import_checkpoint(args.source, args.input, args.out, cfg=cfg, ema=args.ema, num_heads=args.num_heads,
                            dtype=args.dtype, use_embedded=args.config is None and not args.overrides)
    print(f"imported {args.source} {'EMA ' if args.ema else ''}weights from {args.input} to {out} "
          f"(rollforge generate --config {out / 'config.yaml'} --checkpoint {out} --prompt ...)")
    return 0


def register(sub: argparse._SubParsersAction, add_config_args) -> None:
    p = sub.add_parser(
        "import", help="a reference checkpoint (Rolling Forcing / Self-Forcing .pt, diffusers folder) -> export dir",
        epilog=EPILOG,
        description="Convert a reference checkpoint into the directory `rollforge export` writes "
                    "(model.safetensors in Wan's key layout + config.json/config.yaml), which `rollforge generate "
                    "--checkpoint` loads. .pt files are read with torch.load(weights_only=True) only: key "
                    "'generator' (or 'generator_ema' with --ema), FSDP and `model.` prefixes stripped.")
    add_config_args(p)
    p.add_argument("--from", dest="source", required=True, choices=SOURCES,
                   help="rolling-forcing: rolling_forcing_dmd.pt; self-forcing: ode_init.pt / self_forcing_dmd.pt; "
                        "diffusers: a WanTransformer3DModel folder (or a pipeline root with transformer/)")
    p.add_argument("--input", required=True, metavar="PATH", help="the .pt file or the diffusers folder")
    p.add_argument("--out", required=True, metavar="DIR", help="export directory to write")
    p.add_argument("--ema", action="store_true",
                   help="import the .pt's 'generator_ema' (the reference's --use_ema) instead of 'generator'; "
                        "an error if the file has none")
    p.add_argument("--num-heads", type=positive_int, metavar="N",
                   help="attention heads (not stored in the weights). Default: diffusers' config.json; else "
                        "--config's model.num_heads when its dim matches the weights'; else dim/128, Wan's head "
                        "dim (1.3B: dim 1536 -> 12 heads; 14B: dim 5120 -> 40 heads)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                   help="stored weight type (default float32; bfloat16 keeps Wan's release size)")
    p.set_defaults(func=cmd_import)
