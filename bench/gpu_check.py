"""One GPU check for a lent device (`bash bench/gpu_check.sh`): one JSON object, last line of stdout.

    (a) attention parity: flash-attn vs SDPA through `pipeline.attention.attention` (our code path),
        forward and backward, bf16, head dim 128, Wan-like token counts; each also against a float64
        reference. Skipped, with the reason, when flash-attn is not importable.
    (b) `rollforge bench stream` at the Wan2.1-1.3B shape (random weights, bf16, 832x480), samplers
        rolling and block_ar, 30 s and 600 s of video: fps, first-frame latency, peak memory, memory
        over the stream. Every stream runs under a wall-clock cap (`--max-wall-s`) that the driver
        sizes from what is left of the budget: at ~16 fps a 600 s video takes ~600 s, more than the
        whole check's 8 minutes, so the 600 s stream reports the part streamed within its cap
        (`completed: false`, `video_seconds` reached, fps, memory flatness over that part).
    (c) one DMD generator iteration at the 1.3B shape (bf16, activation checkpointing as configured):
        time, FLOPs (torch FlopCounterMode for every op but attention, attention counted analytically,
        activation-checkpoint recompute split out) and MFU against the GPU's dense bf16 peak.

`--dry-run`: everything at tiny shapes on CPU in fp32, in-process, in well under a minute; same keys.
Each part runs in its own process on a GPU (an OOM or crash in one leaves the others' numbers), with
a hard timeout. The JSON says for every number what was measured.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STREAM_CONFIG = ROOT / "configs/wan2.1_t2v_1.3b.yaml"
DISTILL_CONFIG = ROOT / "configs/wan2.1_t2v_1.3b_distill.yaml"
# Random weights; the text encoder is replaced by random states of its shape (its weights are not on
# the device, and it runs outside every clock).
RANDOM_WEIGHTS = ["model.weights=null", "codec.vae_path=null", "runtime.device=cuda", "runtime.dtype=bfloat16"]
# The same configs at a tiny shape for --dry-run: same code paths (Wan VAE, umT5-shaped text, 3-frame
# blocks, 5 steps, sink + 21-frame context), 2 layers of dim 64, 32x32 video.
TINY = ["model.dim=64", "model.ffn_dim=128", "model.num_heads=2", "model.num_layers=2", "model.text_dim=32",
        "model.text_len=16", "text.max_length=16", "video.height=32", "video.width=32", "codec.vae_dim=8",
        "model.weights=null", "codec.vae_path=null", "runtime.device=cpu", "runtime.dtype=float32"]
SAMPLERS = ("rolling", "block_ar")
LENGTHS = (30.0, 600.0)
# Dense bf16 peak FLOP/s (no sparsity), vendor datasheets; matched as substrings of
# torch.cuda.get_device_name(), first match wins (more specific names first).
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
             ("H800", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
             ("L4", 121e12), ("A10G", 70e12), ("RTX 4090", 165e12)]
REFERENCE = {
    "fps": 15.8, "first_frame_latency_s": 0.76, "gpu": "one H100 (as quoted)",
    "source": "docs/BENCHMARKS.md ('The reference implementation reports 15.8 fps and 0.76 s first-frame latency "
              "on one GPU'). The TencentARC/RollingForcing README (commit 250063c) and arXiv 2509.25161 (Fig. 1) "
              "say '16 fps on a single GPU'; the exact 15.8 fps / 0.76 s pair was not traced to a page read here.",
}


# ----------------------------------------------------------------------------- plumbing
def _finite_pos(x) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def _device_info() -> dict:
    import torch

    info = {"torch": torch.__version__, "python": platform.python_version(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update({"gpu": torch.cuda.get_device_name(0), "gpu_memory_bytes": p.total_memory,
                     "multiprocessors": p.multi_processor_count, "cuda_version": torch.version.cuda})
    return info


def peak_bf16_flops(name: str | None) -> tuple[float | None, str]:
    if not name:
        return None, "no CUDA device: no peak to divide by"
    for key, flops in PEAK_BF16:
        if key.lower() in name.lower():
            return flops, f"datasheet dense bf16 for '{key}'"
    return None, f"no dense bf16 peak known for {name!r} (add it to PEAK_BF16)"


# ----------------------------------------------------------------------------- (a) attention parity
def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _max_abs(a, b) -> float:
    return float((a.double() - b.double()).abs().max())


def _run_backend(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(dout)
    return out.detach(), q.grad, k.grad, v.grad


def part_parity(dry: bool) -> dict:
    import torch

    from pipeline.attention import _flash_fn, attention, flash_available, naive_attention

    os.environ.pop("ROLLFORGE_ATTENTION", None)  # it would override the backend argument
    cuda = torch.cuda.is_available() and not dry
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    # Wan: 12 heads of 128; a 3-frame query block (4,680 tokens) against itself + 3 context frames.
    b, n, d, lq, lk = (1, 12, 128, 4680, 9360) if cuda else (1, 2, 128, 96, 192)
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(b, lq, n, d, device=device, generator=g).to(dtype)
    k = torch.randn(b, lk, n, d, device=device, generator=g).to(dtype)
    v = torch.randn(b, lk, n, d, device=device, generator=g).to(dtype)
    dout = torch.randn(b, lq, n, d, device=device, generator=g).to(dtype)
    ref = _run_backend(lambda q, k, v: naive_attention(q, k, v), q.double(), k.double(), v.double(), dout.double())
    sdpa = _run_backend(lambda q, k, v: attention(q, k, v, backend="sdpa"), q, k, v, dout)
    names = ("out", "dq", "dk", "dv")
    out = {"shape": {"batch": b, "heads": n, "head_dim": d, "q_tokens": lq, "kv_tokens": lk},
           "dtype": str(dtype).removeprefix("torch."), "device": device,
           "code_path": "pipeline.attention.attention(backend='sdpa' | 'flash'); reference: naive_attention in float64",
           "sdpa_vs_float64": {nm: {"rel": _rel(a, r), "max_abs": _max_abs(a, r)} for nm, a, r in zip(names, sdpa, ref)}}
    if not cuda:
        out.update({"skipped": True, "reason": "no CUDA device (dry run or CPU): flash-attn runs only on CUDA in bf16/fp16"})
    elif not flash_available():
        out.update({"skipped": True, "reason": "flash_attn (FA2) / flash_attn_interface (FA3) not importable: install the "
                                               "gpu extra (pip install 'rollforge[gpu]') or carry a wheel"})
    else:
        fa = _flash_fn()
        flash = _run_backend(lambda q, k, v: attention(q, k, v, backend="flash"), q, k, v, dout)
        vs_sdpa = {nm: {"rel": _rel(a, s), "max_abs": _max_abs(a, s)} for nm, a, s in zip(names, flash, sdpa)}
        vs_ref = {nm: {"rel": _rel(a, r), "max_abs": _max_abs(a, r)} for nm, a, r in zip(names, flash, ref)}
        # bf16 operands land between 1e-3 and 1e-2 of a float64 reference; flash must be no worse than
        # SDPA by more than 2x, and the two must agree within bf16 rounding.
        ok = all(vs_ref[nm]["rel"] <= max(2 * out["sdpa_vs_float64"][nm]["rel"], 1e-2) and vs_sdpa[nm]["rel"] <= 2e-2
                 for nm in names)
        out.update({"skipped": False, "flash_impl": getattr(fa, "__module__", "?"), "flash_vs_sdpa": vs_sdpa,
                    "flash_vs_float64": vs_ref, "ok": ok})
    return out


# ----------------------------------------------------------------------------- (b) streams
def _cli_json(argv: list[str]) -> dict:
    """`rollforge <argv>` in this process; its last stdout line parsed as JSON."""
    from infra.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    if rc != 0:
        raise RuntimeError(f"rollforge {' '.join(argv)} exited {rc}")
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def stream_argv(dry: bool, sampler: str, seconds: float, cap_s: float, every_s: float) -> list[str]:
    return ["bench", "stream", "--config", str(STREAM_CONFIG), "--json", "--random-text", "--warmup",
            "--sampler", sampler, "--seconds", f"{seconds:g}", "--max-wall-s", f"{cap_s:.1f}",
            "--memory-every-s", f"{every_s:g}", *(TINY if dry else RANDOM_WEIGHTS)]


def summarize_stream(r: dict, seconds: float) -> dict:
    """The CLI's JSON plus what the driver reads off it: memory flatness after the context filled."""
    tl = r.get("memory_timeline") or []
    key = "peak_cuda_bytes" if tl and "peak_cuda_bytes" in tl[0] else "peak_rss_bytes"
    # The cache is full after sink + context blocks (~5 s of Wan video); compare from 10 s on.
    reached = r.get("video_seconds") or seconds
    later = [s for s in tl if s["video_s"] >= min(10.0, reached / 3)] or tl[-1:]
    flat = None
    if len(later) >= 2 and later[0][key]:
        flat = {"metric": key, "from_video_s": later[0]["video_s"], "to_video_s": later[-1]["video_s"],
                "ratio_last_to_first": later[-1][key] / later[0][key]}
    out = {k: r.get(k) for k in ("sampler", "completed", "requested_video_seconds", "video_seconds", "video_frames",
                                 "wall_s", "fps", "first_frame_latency_s", "peak_cuda_bytes", "peak_rss_bytes",
                                 "kv_cache_bytes", "dtype", "device", "attention_backend", "warmup_s", "max_wall_s")}
    out["memory_flatness"] = flat
    out["memory_timeline"] = tl
    out["realtime_factor"] = (r["fps"] / 16.0) if r.get("fps") else None  # Wan's 16 fps video
    if not r.get("completed") and r.get("fps"):
        out["projected_wall_s_full_length"] = seconds * 16.0 / r["fps"]
    out["measured"] = ("the whole requested stream" if r.get("completed") else
                       f"the first {r.get('video_seconds', 0):.1f} s of a {seconds:g} s stream, stopped by the "
                       f"{r.get('max_wall_s')} s wall-clock cap (fps and memory over that part)")
    return out


# ----------------------------------------------------------------------------- (c) DMD step MFU
class _FlopMeter:
    """FlopCounterMode for every op but attention (its registry's attention entries are dropped:
    flash-attn is invisible to it and the CPU kernel is not registered), attention counted
    analytically per call of `pipeline.networks.wan_dit.attention` (forward 4·B·n·Lq·Lk·d, backward
    twice that when a gradient reaches its output), and the forward FLOPs that activation
    checkpointing re-runs inside backward split out (`recompute`)."""

    def __init__(self, modules):
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        import pipeline.networks.wan_dit as wan_dit_mod

        self.torch, self.mod = torch, wan_dit_mod
        self.mode = FlopCounterMode(display=False)
        reg = self.mode.flop_registry
        for key in [k for k in reg if "attention" in str(k)]:
            del reg[key]
        self.attn = 0.0
        self.recompute = 0.0
        self._mark = None
        self._handles = []
        for m in modules:
            for blk in getattr(m, "blocks", []):
                self._handles.append(blk.register_forward_pre_hook(self._pre))
                self._handles.append(blk.register_forward_hook(self._post))

    def _in_backward(self) -> bool:
        return self.torch._C._current_graph_task_id() != -1

    def total(self) -> float:
        return float(self.mode.get_total_flops()) + self.attn

    def _pre(self, *_):
        if self._in_backward():
            self._mark = self.total()

    def _post(self, *_):
        if self._mark is not None:
            self.recompute += self.total() - self._mark
            self._mark = None

    @contextlib.contextmanager
    def counting(self):
        real = self.mod.attention

        def counted(q, k, v, mask=None, **kw):
            b, lq, n, dh = q.shape
            flops = 4.0 * b * n * lq * k.shape[1] * dh
            self.attn += flops
            out = real(q, k, v, mask, **kw)
            if out.requires_grad:
                out.register_hook(lambda g: self._add(2 * flops) or None)
            return out

        self.mod.attention = counted
        try:
            # Early stop ends a recompute once the tensors backward needs exist, skipping the block's
            # forward hooks; counting runs the whole block so that its FLOPs are split out exactly.
            with self.mode, self.torch.utils.checkpoint.set_checkpoint_early_stop(False):
                yield self
        finally:
            self.mod.attention = real

    def _add(self, flops: float) -> None:
        self.attn += flops

    def close(self):
        for h in self._handles:
            h.remove()


def part_mfu(dry: bool, repeats: int) -> dict:
    import random
    from unittest import mock

    import torch

    import training.objective as objective_mod
    from infra.config import load_config
    from infra.schema import Config
    from pipeline.networks.text_encoders import RandomTextEncoder
    from training.distill import DistillObjective
    from training.engines import make_optimizer

    cuda = torch.cuda.is_available() and not dry
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    # 8 blocks (the mean of the reference's 7..9) on a GPU; the dry run keeps to the 7-block context,
    # which skips the Wan VAE's first-frame re-encode (seconds of CPU at any size).
    blocks = 8 if cuda else 7
    overrides = [*(RANDOM_WEIGHTS if cuda else TINY), "train.teacher=null", "train.init_from=null",
                 "train.p_self_forcing=0.0", f"train.rollout_blocks={blocks}", f"train.min_rollout_blocks={blocks}",
                 "train.critic_updates_per_generator=2", "train.batch_size=1", "tracking.enabled=false"]
    cfg = load_config(Config, DISTILL_CONFIG, overrides)
    text_shape = (cfg.model.text_len, cfg.model.text_dim)

    class BenchEngine(torch.nn.Module):
        """The engine interface the objective uses, on one device without DeepSpeed: the module in
        the run dtype and the configured AdamW (no fp32 master copy, no ZeRO partitioning)."""

        def __init__(self, model, optim, train, run_dtype):
            super().__init__()
            self.module = model.to(run_dtype)
            self.opt = make_optimizer([p for p in self.module.parameters() if p.requires_grad], optim)

        def forward(self, *a, **kw):
            return self.module(*a, **kw)

        def backward(self, loss):
            loss.backward()

        def step(self):
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

        def zero_grad(self):
            self.opt.zero_grad(set_to_none=True)

    class PromptLoader:
        """Random text states [B, text_len, text_dim] in place of the latent shards."""

        def __init__(self, urls, rank, world, batch_size=1, **kw):
            self.batch, self.gen = batch_size, torch.Generator().manual_seed(rank)

        def __iter__(self):
            while True:
                yield {"text": torch.randn(self.batch, *text_shape, generator=self.gen)}

        def state_dict(self):
            return {}

    patches = [mock.patch.object(objective_mod, "build_engine", BenchEngine),
               mock.patch.object(objective_mod, "ShardLoader", PromptLoader),
               mock.patch.object(objective_mod, "latent_urls", lambda _d: []),
               mock.patch.object(objective_mod, "build_text_encoder", lambda _text, dev: RandomTextEncoder(cfg, dev)),
               mock.patch.object(objective_mod.Objective, "frozen_teacher",
                                 lambda self: self.new_dit(None, trainable=False, role="teacher"))]
    t_build = time.perf_counter()
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        for p in patches:
            stack.enter_context(p)
        obj = DistillObjective(cfg, device, dtype, 0, 1, Path(tmp))
        build_s = time.perf_counter() - t_build
        models = [obj.engines["generator"].module, obj.engines["critic"].module, obj.teacher]
        params = sum(p.numel() for p in obj.engines["generator"].module.parameters())

        def sync():
            if cuda:
                torch.cuda.synchronize()

        def one(step: int, meter: _FlopMeter | None) -> tuple[float, dict]:
            random.seed(1234)
            obj.noise.manual_seed(5678)
            sync()
            t0 = time.perf_counter()
            ctx = meter.counting() if meter else contextlib.nullcontext()
            with ctx:
                logs = obj.train_step(step)
            sync()
            return time.perf_counter() - t0, logs

        result: dict = {}
        # step 2 = generator iteration (generator update, then the critic update that follows it in
        # the same iteration); step 1 = critic-only iteration. Counting runs first and doubles as warm-up.
        for name, step in (("generator_iteration", 2), ("critic_iteration", 1)):
            meter = _FlopMeter(models)
            count_s, logs = one(step, meter)
            meter.close()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            times = [one(step, None)[0] for _ in range(repeats)]
            result[name] = {"seconds": min(times), "seconds_all": times, "counting_pass_s": count_s,
                            "flops_executed": meter.total(), "flops_recompute": meter.recompute,
                            "flops_model": meter.total() - meter.recompute, "attention_flops": meter.attn,
                            "tokens": logs.get("tokens"), "stepped_generator": bool(logs.get("stepped/generator")),
                            "peak_cuda_bytes": torch.cuda.max_memory_allocated() if cuda else None}
    gen, crit = result["generator_iteration"], result["critic_iteration"]
    gen_only = {"seconds": gen["seconds"] - crit["seconds"], "flops_model": gen["flops_model"] - crit["flops_model"],
                "flops_executed": gen["flops_executed"] - crit["flops_executed"],
                "note": "generator iteration minus critic iteration: the generator rollout with gradient, DMD "
                        "(teacher with CFG + critic forwards), generator backward and AdamW step"}
    result["generator_update_only"] = gen_only
    gpu = torch.cuda.get_device_name(0) if cuda else None
    peak, peak_note = peak_bf16_flops(gpu)
    for part in (gen, crit, gen_only):
        ok = peak and part["seconds"] > 0
        part["mfu"] = part["flops_model"] / (part["seconds"] * peak) if ok else None
        part["hfu"] = part["flops_executed"] / (part["seconds"] * peak) if ok else None
        part["achieved_tflops"] = part["flops_model"] / part["seconds"] / 1e12 if part["seconds"] > 0 else None
    result.update({
        "gpu": gpu, "peak_bf16_flops": peak, "peak_source": peak_note, "build_s": build_s,
        "mfu_skipped_reason": None if peak else peak_note,
        "generator_params": params, "dtype": str(dtype).removeprefix("torch."),
        "activation_checkpointing": cfg.train.activation_checkpointing,
        "setup": "DistillObjective built as tests/unit/test_distill_step.py builds it (random weights; stand-in engine "
                 "= module in the run dtype + the configured AdamW, no DeepSpeed; random prompt states). Rolling "
                 f"Forcing rollout (p_self_forcing=0) of {blocks} blocks, CFG teacher, batch 1. "
                 "MFU = model FLOPs (checkpoint recompute excluded) / (time x dense bf16 peak); HFU counts recompute.",
    })
    return result


# ----------------------------------------------------------------------------- orchestration
def _child(argv: list[str], timeout_s: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout_s, 1))
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-800:]
        return {"error": f"timed out after {timeout_s:.0f} s", "stderr_tail": tail.decode(errors="replace")
                if isinstance(tail, bytes) else tail}
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        return {"error": f"exit {p.returncode}", "stderr_tail": p.stderr[-1500:]}
    out = json.loads(lines[-1])
    out.setdefault("process_wall_s", time.perf_counter() - t0)
    return out


def _guard(fn, *a) -> dict:
    try:
        return fn(*a)
    except Exception as e:  # one part's failure must not lose the others' numbers
        import traceback

        return {"error": f"{type(e).__name__}: {e}", "traceback_tail": traceback.format_exc()[-1500:]}


def run_part(args, part: str, extra: list[str], timeout_s: float) -> dict:
    if args.isolate:
        return _child(["--part", part, *(["--dry-run"] if args.dry_run else []), *extra], timeout_s)
    if part == "parity":
        return _guard(part_parity, args.dry_run)
    if part == "mfu":
        return _guard(part_mfu, args.dry_run, args.mfu_repeats)
    return _guard(_cli_json, [a for a in extra if a != "--"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU in fp32, in-process (seconds)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget of the whole check "
                    "(default 460 s on a GPU, within 8 minutes; 40 s for --dry-run)")
    ap.add_argument("--parts", default="parity,mfu,stream", help="comma-separated subset of parity,mfu,stream")
    ap.add_argument("--mfu-repeats", type=int, default=None, help="timed DMD iterations of each kind (min is kept)")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="each part in its own process with a hard timeout (default: on a GPU run, off for --dry-run)")
    ap.add_argument("--out", metavar="FILE", help="also write the JSON object here")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # child process: one part, its JSON on stdout
    args, rest = ap.parse_known_args(argv)
    if args.dry_run:  # tiny ops: one thread, else a busy shared CPU spends 100x the time spinning
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)
    if args.mfu_repeats is None:
        args.mfu_repeats = 1 if args.dry_run else 2
    if args.part:
        if args.part == "parity":
            res = part_parity(args.dry_run)
        elif args.part == "mfu":
            res = part_mfu(args.dry_run, args.mfu_repeats)
        elif args.part == "cli":
            res = _cli_json([a for a in rest if a != "--"])
        else:
            raise SystemExit(f"unknown part {args.part!r}")
        print(json.dumps(res))
        return 0
    if args.isolate is None:
        args.isolate = not args.dry_run
    budget = args.budget_s or (40.0 if args.dry_run else 460.0)
    start = time.perf_counter()
    deadline = start + budget
    parts = set(args.parts.split(","))
    report: dict = {"check": "bench/gpu_check.sh", "dry_run": args.dry_run, "budget_s": budget,
                    "reference": REFERENCE}
    import torch

    report["device"] = _device_info() if not args.dry_run else {**_device_info(), "used": "cpu (dry run)"}
    if not args.dry_run and not torch.cuda.is_available():
        report["warning"] = "no CUDA device: the numbers below are CPU numbers at the Wan shape (use --dry-run on CPU)"

    def left() -> float:
        return deadline - time.perf_counter()

    # (a) cheap, (c) fixed cost, then (b), whose caps adapt to what is left.
    report["attention_parity"] = (run_part(args, "parity", [], min(90.0, left())) if "parity" in parts
                                  else {"skipped": True, "reason": "not in --parts"})
    report["dmd_step_mfu"] = (run_part(args, "mfu", [], min(200.0 if not args.dry_run else 60.0, left() - 60))
                              if "mfu" in parts else {"skipped": True, "reason": "not in --parts"})
    streams: dict = {}
    if "stream" in parts:
        runs = [(s, sec) for sec in LENGTHS for s in SAMPLERS]
        # Per run: process start, model build and warm-up (~30 s at the Wan shape on an H100, by
        # estimate), then the capped stream. A 30 s video needs ~30 s at 16 fps; the 600 s videos get
        # what is left, split evenly.
        overhead = 1.0 if args.dry_run else 35.0
        avail = left() - 10.0 - overhead * len(runs)
        short_cap = min(60.0, max(avail * 0.25, 0.0))
        long_cap = max((avail - 2 * short_cap) / 2, 0.0)
        if args.dry_run:  # the cap path is what a dry run checks, not the budget arithmetic
            short_cap = long_cap = 1.5
        for sampler, sec in runs:
            cap = short_cap if sec == LENGTHS[0] else long_cap
            key = f"{sampler}_{int(sec)}s"
            if cap < (0.5 if args.dry_run else 10.0):
                streams[key] = {"skipped": True, "reason": f"budget: only {cap:.0f} s of wall time left for it"}
                continue
            every = 0.5 if args.dry_run else (5.0 if sec == LENGTHS[0] else 10.0)
            argv_ = stream_argv(args.dry_run, sampler, sec, cap, every)
            shown = ["configs/wan2.1_t2v_1.3b.yaml" if a == str(STREAM_CONFIG) else a for a in argv_]
            res = run_part(args, "cli", ["--", *argv_], cap + overhead + 90.0)
            if "error" in res:
                streams[key] = {**res, "command": "rollforge " + " ".join(shown)}
                continue
            streams[key] = {**summarize_stream(res, sec), "command": "rollforge " + " ".join(shown)}
            if args.dry_run:  # the tiny model streams far faster than real time: no projection to make
                streams[key].pop("projected_wall_s_full_length", None)
    else:
        streams = {"skipped": True, "reason": "not in --parts"}
    report["stream"] = {
        "shape": "tiny (dry run)" if args.dry_run else "Wan2.1-T2V-1.3B: 832x480, 1560 tokens/latent frame, 30 layers, "
                                                       "dim 1536, bf16, random weights, Wan VAE decode included",
        "design": "each stream runs `rollforge bench stream --warmup --max-wall-s CAP --memory-every-s S`; CAP is "
                  "sized from the budget left, so the 600 s streams report the part streamed within CAP "
                  "(completed=false): fps, first-frame latency, peak memory and its flatness once the cache is "
                  "full (the cache holds a fixed sink + recent blocks, so memory is flat from ~5 s of video on), "
                  "and the wall time the full length would take at that fps",
        "runs": streams,
    }
    report["elapsed_s"] = time.perf_counter() - start
    line = json.dumps(report)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
