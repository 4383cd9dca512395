"""`rollforge plan`: will the distill stage fit? Per-GPU memory of each role, from the config alone.

The arithmetic (and what it counts and leaves out) is in infra/plan.py. With --json one object:

    {"gpus", "gpu_mem", "dtype", "settings": {train.* knobs},
     "roles": {"student" | "critic" | "teacher": {"params", "param_bytes", "grad_bytes", "optimizer_bytes",
               "ema_bytes", "activation_bytes", "kv_cache_bytes", "static_bytes", ...}},
     "activations": {...}, "static", "dynamic", "total", "fits", ["advice": [{"set": {...}, "total"}]]}

All byte figures are per GPU.
"""

from __future__ import annotations

import argparse
import json

from .cli_types import positive_float, positive_int
from .config import load_config
from .schema import Config

EPILOG = ("Overrides: any config key as key.sub=value, e.g. train.zero_stage=3 train.teacher_shard=true "
          "teacher_model.dim=5120 teacher_model.ffn_dim=13824 teacher_model.num_heads=40 teacher_model.num_layers=40")


def cmd_plan(args: argparse.Namespace) -> int:
    from .plan import GB, plan

    cfg = load_config(Config, args.config, args.overrides)
    gpus = args.gpus or cfg.run.learners
    result = plan(cfg, gpus, args.gpu_mem * GB)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0 if result["fits"] else 1


def _gb(v) -> str:
    return "" if v is None else f"{v / 1e9:.2f}"


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    s = result["settings"]
    title = (f"per-GPU memory, GB, on {result['gpus']} x {result['gpu_mem'] / 1e9:g} GB ({result['dtype']}; "
             f"ZeRO-{s['zero_stage']}, offload_optimizer={s['offload_optimizer']}, teacher_shard={s['teacher_shard']}, "
             f"activation_checkpointing={s['activation_checkpointing']}, batch_size={s['batch_size']})")
    t = Table(title=title)
    cols = ("params", "param_bytes", "grad_bytes", "optimizer_bytes", "ema_bytes", "kv_cache_bytes",
            "activation_bytes")
    t.add_column("role")
    t.add_column("parameters", justify="right")
    for c in ("weights", "grads", "optimizer", "EMA", "KV cache", "activations"):
        t.add_column(c, justify="right")
    for role in ("student", "critic", "teacher"):
        r = result["roles"][role]
        name = f"{role} (sharded)" if r.get("sharded") else role
        t.add_row(name, f"{r['params'] / 1e9:.3f} B", *(_gb(r.get(c)) for c in cols[1:]))
    console.print(t)
    act = result["activations"]
    console.print(f"static (weights, grads, optimizer, EMA, teacher): {_gb(result['static'])} GB; "
                  f"dynamic ({act['peak_step'].replace('_', ' ')}, the larger of the two steps): "
                  f"{_gb(result['dynamic'])} GB")
    console.print(f"generator step keeps the graphs of: {act['generator_rollout']} "
                  f"({len(act['generator_forwards'])} forwards); activations "
                  f"{_gb(act['generator_step']['checkpointing'])} GB checkpointed, "
                  f"{_gb(act['generator_step']['no_checkpointing'])} GB not; one full gradient window: "
                  f"{_gb(act['one_window']['checkpointing'])} / {_gb(act['one_window']['no_checkpointing'])} GB")
    verdict = "[green]fits[/green]" if result["fits"] else "[red]does not fit[/red]"
    console.print(f"[bold]total {_gb(result['total'])} GB of {_gb(result['gpu_mem'])} GB: {verdict}[/bold] "
                  "(not counted: text encoder, CUDA context, fragmentation; see infra/plan.py)")
    for a in result.get("advice", []):
        if a["set"]:
            change = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in a["set"].items())
            console.print(f"  fits with {change}: {_gb(a['total'])} GB")
        else:
            console.print(f"  {a['note']}")


def register(sub: argparse._SubParsersAction, add_config_args) -> None:
    p = sub.add_parser("plan", help="per-GPU memory of the distill stage: fits or not, and what to change",
                       epilog=EPILOG,
                       description="Per GPU and per role (student, critic, teacher): the bytes of weights, "
                       "gradients, optimizer states (DeepSpeed's ZeRO accounting), the generator's EMA, the "
                       "rolling KV cache and the activations of the generator and critic steps; the total "
                       "against --gpu-mem, and when it does not fit, the train.* changes that make it fit. "
                       "Exit status 1 when it does not fit.")
    add_config_args(p)
    p.add_argument("--gpus", type=positive_int, help="ranks (GPUs) the stage runs on (default: run.learners)")
    p.add_argument("--gpu-mem", type=positive_float, default=80.0, metavar="GB",
                   help="memory per GPU in GB (1e9 bytes; default 80)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_plan)
