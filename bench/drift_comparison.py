"""Benchmark (issue 6): Rolling Forcing student vs block-AR student vs the teacher, far past the training length.

Same teacher, same ODE init, same distillation budget (steps, seed, learning rates):
  rf_student        distilled with Rolling Forcing rollouts (train.p_self_forcing = the documented RF
                    mix, 0.5 as in the reference: ARCHITECTURE.md §2), streamed with the `rolling` sampler
  block_ar_student  distilled with Self-Forcing rollouts only (p_self_forcing = 1.0), streamed with
                    the `block_ar` sampler
  teacher_extended  the bidirectional teacher extended chunk by chunk (`teacher_extended_latents`):
                    context-length clips, each holding the previous clip's last block(s) fixed
Each is streamed to length_factor x the training rollout length (at least 10 s, so the 5 s first/last
windows of ΔDrift do not overlap) for the same prompts with the same seed, and scored per chunk with
evaluation.drift (BRISQUE ΔDrift = |Q(first 5 s) - Q(last 5 s)|, similarity of the last chunk to the
first, Fréchet first vs last, flicker) plus throughput. Goal: ΔDrift(rf) <= 0.5 x ΔDrift(block_ar).

Steps:
  1. the shared teacher + ODE init: --from-run DIR reuses DIR/teacher/export, DIR/ode_init/export and
     DIR/data/latents (e.g. outputs/demo after `make demo`); without it they are built in
     OUT/runs/base with `rollforge run --stages shard,precompute,teacher,ode_init`;
  2. two `rollforge run --stages distill,export` runs, one after the other, in OUT/runs/<student>
     (rerunning the bench with the same settings skips finished runs by fingerprint);
  3. the three streams per prompt: OUT/eval/<model>/videos/*.mp4, metrics.json per model;
  4. OUT/metrics.json (the merged evaluation), OUT/report.md, OUT/report.html, OUT/plots/*.png, and
     OUT/comparison.json = the one JSON object this prints on stdout (progress goes to stderr).

Usage: python bench/drift_comparison.py [--config configs/compare.yaml] [--from-run outputs/demo]
           [--out outputs/compare] [--distill-steps 150] [--length-factor 10] [--prompts 2|FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# Heavy imports (torch, the models, the metrics) happen inside the functions that need them, so
# --help and the pure helpers below stay instant.

from evaluation.ablation import (  # noqa: F401  (training_seconds, MIN_SECONDS: this bench's helpers, tested)
    MIN_SECONDS,
    RF_P_SELF_FORCING,
    longest_rollout,
    stream_seconds,
    training_seconds,
)
from evaluation.throughput import warm_up
from infra.bench_runs import add_training_bench_args, distill_steps, distill_student, shared_start

GOAL_RATIO = 0.5  # RF ΔDrift must be at most this share of the block-AR student's
MODELS = {  # name -> (sampler, p_self_forcing of its distill run; None = not distilled)
    "rf_student": ("rolling", RF_P_SELF_FORCING),
    "block_ar_student": ("block_ar", 1.0),
    "teacher_extended": ("teacher_extended", None),
}


def log(msg: str) -> None:
    print(f"[drift_comparison] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- pure helpers
def teacher_chunk_plan(num_blocks: int, clip_blocks: int, prefix_blocks: int) -> list[tuple[int, int]]:
    """[(first new block of the stream, new blocks emitted)] per teacher clip.

    The first clip emits all its `clip_blocks` blocks; every later clip re-uses the previous clip's
    last `prefix_blocks` blocks as its fixed prefix and emits the `clip_blocks - prefix_blocks` after
    them. The last clip's count is cut so the stream has exactly `num_blocks` blocks.
    """
    if not 0 <= prefix_blocks < clip_blocks:
        raise ValueError(f"prefix_blocks must be in [0, {clip_blocks}), got {prefix_blocks}")
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be positive, got {num_blocks}")
    plan, start = [], 0
    while start < num_blocks:
        new = clip_blocks if not plan else clip_blocks - prefix_blocks
        count = min(new, num_blocks - start)
        plan.append((start, count))
        start += count
    return plan


def drift_ratio(rf: float | None, block_ar: float | None) -> float | None:
    """ΔDrift(rf) / ΔDrift(block_ar); None when undefined (missing, non-finite, or a zero denominator)."""
    if rf is None or block_ar is None or not (math.isfinite(rf) and math.isfinite(block_ar)) or block_ar == 0:
        return None
    return rf / block_ar


def select_prompts(arg: str | None, configured: list[str]) -> list[str]:
    """--prompts: None -> the config's run.evaluate.prompts; a positive integer N -> the first N of
    them; anything else -> a prompt file (infra.cli_eval.read_prompts: .txt / YAML / JSON list)."""
    if arg is None:
        return list(configured)
    if arg.strip().isdigit():
        n = int(arg)
        if not 1 <= n <= len(configured):
            raise ValueError(f"--prompts {n}: the config lists {len(configured)} prompt(s); give 1..{len(configured)} "
                             f"or a prompt file")
        return list(configured[:n])
    from infra.cli_eval import read_prompts

    return read_prompts(arg)


# ----------------------------------------------------------------------------- the teacher, extended
def teacher_extended_latents(model, text, uncond, block_shape: tuple[int, ...], num_blocks: int, clip_blocks: int,
                             prefix_blocks: int, num_steps: int, shift: float, guidance_scale: float, generator,
                             num_train_timesteps: int = 1000) -> Iterator[tuple[int, object]]:
    """The bidirectional teacher extended past its clip, chunk by chunk: yields (block, clean latent
    [B, fpb, C, h, w]) for blocks 0..num_blocks-1.

    Each chunk is one teacher clip of `clip_blocks` blocks (its context), sampled exactly as
    pipeline.samplers.bidirectional does (Euler steps on the shifted schedule, CFG when g != 1).
    The first clip is unconstrained. Every later clip holds the previous clip's last P =
    `prefix_blocks` blocks fixed as its prefix by replacement (inpainting): before every Euler step
    at sigma_i, x[:, :P*fpb] = add_noise(known, eps_known, sigma_i) with one eps_known per clip, i.e.
    the prefix sits on the straight flow-matching path of the known clean frames, and the teacher
    denoises the rest of the clip consistently with it. Only the clip's new blocks (P..) are emitted,
    so consecutive chunks connect through the shared blocks. P = 0 gives independent clips.
    """
    import torch

    from pipeline.schedule import add_noise, euler_step, teacher_sigmas

    b, fpb, rest = block_shape[0], block_shape[1], tuple(block_shape[2:])
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    p = prefix_blocks * fpb
    sigmas = teacher_sigmas(num_steps, shift)
    known = None
    for start, count in teacher_chunk_plan(num_blocks, clip_blocks, prefix_blocks):
        x = torch.randn((b, clip_blocks * fpb, *rest), generator=generator, device=device, dtype=dtype)
        eps_known = (torch.randn((b, p, *rest), generator=generator, device=device, dtype=dtype)
                     if known is not None else None)
        for i in range(num_steps):
            tau = float(sigmas[i]) * num_train_timesteps
            if known is not None:
                x[:, :p] = add_noise(known, eps_known, tau, num_train_timesteps)
            t = torch.full((b,), tau, device=device)
            flow = model(x, t, text)
            if uncond is not None and guidance_scale != 1.0:
                flow_u = model(x, t, uncond)
                flow = flow_u + guidance_scale * (flow - flow_u)
            x = euler_step(x, flow, sigmas[i], sigmas[i + 1])
        first = 0
        if known is not None:
            x[:, :p] = known  # sigma = 0: the prefix is the known frames exactly
            first = prefix_blocks
        for j in range(count):
            k = first + j
            yield start + j, x[:, k * fpb:(k + 1) * fpb]
        known = x[:, x.shape[1] - p:].clone() if p else None


def teacher_extended_stream(gen, prompt: str, num_blocks: int, prefix_blocks: int, seed: int) -> Iterator:
    """Decoded uint8 frames [n, H, W, 3] of the extended teacher, block by block through the codec's
    streaming decoder (what StreamingGenerator.stream_video does for the streaming samplers)."""
    import torch

    from pipeline.video_io import to_uint8_frames

    cfg, s = gen.cfg, gen.cfg.stream
    sc = cfg.sampler
    uncond = gen.text_cond(sc.negative_prompt) if sc.guidance_scale != 1.0 else None
    rng = torch.Generator(device=gen.device).manual_seed(seed)
    decoder = gen.codec.stream_decoder()
    with torch.no_grad():
        for _, latent in teacher_extended_latents(gen.model, gen.text_cond(prompt), uncond, gen.latent_block_shape,
                                                  num_blocks, s.context_blocks, prefix_blocks, sc.teacher_steps,
                                                  s.shift, sc.guidance_scale, rng, s.num_train_timesteps):
            yield to_uint8_frames(decoder.decode(latent.to(gen.dtype)))


def evaluate_teacher_extended(cfg, teacher: Path, out: Path, seconds: float, prompts: list[str], sinks: dict,
                              prefix_blocks: int) -> tuple[dict, int]:
    """(the `evaluate()` result entry of the extended teacher, its stream's blocks): per prompt a timed
    stream (nothing written or scored) and a stream written to OUT/videos/teacher_extended_<i>.mp4 and
    fed to the drift sinks."""
    from evaluation.evaluate import MB
    from evaluation.throughput import peak_rss_bytes
    from pipeline.generator import StreamingGenerator
    from pipeline.video_io import Mp4Writer

    (out / "videos").mkdir(parents=True, exist_ok=True)
    gen = StreamingGenerator(cfg, checkpoint=teacher)
    num_blocks = gen.blocks_for_seconds(seconds)
    seed = cfg.runtime.seed
    runs = []
    for i, prompt in enumerate(prompts):
        gen.text_cond(prompt)  # encode outside the clock, as measure_stream does
        frames, first, start = 0, None, time.perf_counter()
        for chunk in teacher_extended_stream(gen, prompt, num_blocks, prefix_blocks, seed):
            if first is None:
                first = time.perf_counter() - start
            frames += len(chunk)
        wall = time.perf_counter() - start
        timing = {"sampler": "teacher_extended", "recompute": False,
                  "latent_frames": num_blocks * cfg.stream.frames_per_block, "video_frames": frames,
                  "video_seconds": frames / cfg.video.fps, "wall_s": wall,
                  "fps": frames / wall if wall > 0 else float("inf"), "first_frame_latency_s": first,
                  "peak_rss_bytes": peak_rss_bytes(), "kv_cache_bytes": 0, "device": str(gen.device),
                  "dtype": cfg.runtime.dtype}
        scorers = {name: make("teacher_extended", i) for name, make in sinks.items()}
        video = out / "videos" / f"teacher_extended_{i}.mp4"
        with Mp4Writer(video, cfg.video.fps, cfg.video.width, cfg.video.height) as writer:
            for chunk in teacher_extended_stream(gen, prompt, num_blocks, prefix_blocks, seed):
                writer.write(chunk)
                for add, _ in scorers.values():
                    add(chunk)
        runs.append({"prompt": prompt, "video": str(video.relative_to(out)), "throughput": timing,
                     **{name: finish() for name, (_, finish) in scorers.items()}})
        log(f"  teacher_extended: prompt {i + 1}/{len(prompts)} done")
    summary = {"runs": runs, "fps": statistics.fmean(r["throughput"]["fps"] for r in runs),
               "first_frame_latency_s": statistics.fmean(r["throughput"]["first_frame_latency_s"] for r in runs),
               "peak_rss_mb": max(r["throughput"]["peak_rss_bytes"] for r in runs) / MB, "kv_cache_mb": 0.0}
    return summary, num_blocks


# ----------------------------------------------------------------------------- main
def _rebase_videos(summary: dict, prefix: str) -> dict:
    """Video paths of an evaluate() summary made relative to the bench's OUT (for the merged report)."""
    for run in summary["runs"]:
        run["video"] = f"{prefix}/{run['video']}"
    return summary


def noise_se(chunk_qualities: list[float], window_chunks: int) -> float | None:
    """A rough noise scale of ΔDrift: the standard error of the difference of two means of
    `window_chunks` chunk qualities, sqrt(2 / n) x the sample std of the chunk qualities, i.e. what
    |Q(first) - Q(last)| would typically be if the quality were constant plus independent per-chunk
    noise. ΔDrift within ~2x this is indistinguishable from no drift. None with < 2 chunks."""
    q = [v for v in chunk_qualities if v is not None and math.isfinite(v)]
    if len(q) < 2 or window_chunks < 1:
        return None
    return statistics.stdev(q) * math.sqrt(2.0 / window_chunks)


def model_numbers(summary: dict, flat: dict, name: str, window_chunks: int = 5) -> dict:
    """The per-model block of the printed JSON: means over prompts plus the per-prompt ΔDrift and
    its rough noise scale (`noise_se`, over the full chunks)."""
    from evaluation.evaluate import drift_scalars

    runs = summary["runs"]
    noise = [noise_se([c.get("quality") for c in (r.get("drift") or {}).get("chunks") or [] if not c.get("partial")],
                      window_chunks) for r in runs]
    noise = [v for v in noise if v is not None]
    qualities = [(r.get("drift") or {}).get("quality") or {} for r in runs]
    first = [q.get("first") for q in qualities if q.get("first") is not None]
    last = [q.get("last") for q in qualities if q.get("last") is not None]
    return {
        "delta_drift_brisque": flat.get(f"{name}/quality_drift"),
        "delta_drift_per_prompt": [q.get("delta_drift") for q in qualities],
        "delta_drift_noise_se": sum(noise) / len(noise) if noise else None,
        "brisque_first_5s": sum(first) / len(first) if first else None,
        "brisque_last_5s": sum(last) / len(last) if last else None,
        "similarity_last_to_first": flat.get(f"{name}/similarity_last_to_first"),
        "similarity_min_to_first": flat.get(f"{name}/similarity_min_to_first"),
        "luma_max_deviation": flat.get(f"{name}/luma_max_deviation"),
        "luma_max_deviation_per_prompt": [drift_scalars(r.get("drift") or {})["luma_max_deviation"] for r in runs],
        "frechet_first_last": flat.get(f"{name}/frechet_first_last"),
        "flicker": flat.get(f"{name}/flicker"),
        "fps": flat.get(f"{name}/fps"),
        "first_frame_latency_s": flat.get(f"{name}/first_frame_latency_s"),
        "video_frames": runs[0]["throughput"]["video_frames"] if runs else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Prints one JSON object (also OUT/comparison.json); progress on stderr.")
    add_training_bench_args(p, config="configs/compare.yaml", out="outputs/compare")
    p.add_argument("--prompts", metavar="N|FILE", help="the first N of the config's run.evaluate.prompts, or a "
                   "prompt file (.txt one per line, YAML/JSON list); default: all of the config's")
    p.add_argument("--teacher-prefix-blocks", type=int, default=2, metavar="P",
                   help="blocks each teacher clip takes over from the previous one (0 = independent clips; "
                   "default: 2)")
    p.add_argument("--rf-p-self-forcing", type=float, default=RF_P_SELF_FORCING, metavar="P",
                   help=f"train.p_self_forcing of the RF student (default: {RF_P_SELF_FORCING}, the reference's Rolling "
                   "Forcing mix; 0 = pure rolling rollouts); the block-AR student always uses 1.0")
    args = p.parse_args(argv)

    from evaluation.evaluate import drift_sinks, evaluate, flat_metrics
    from evaluation.report import write_report
    from evaluation.throughput import machine_info
    from infra.config import load_config, save_resolved, to_dict
    from infra.schema import Config

    t_total = time.perf_counter()
    cfg = load_config(Config, args.config)
    s = cfg.stream
    steps = distill_steps(args.distill_steps, cfg)
    if not 0 <= args.teacher_prefix_blocks < s.context_blocks:
        raise ValueError(f"--teacher-prefix-blocks must be in [0, {s.context_blocks}), got {args.teacher_prefix_blocks}")
    prompts = select_prompts(args.prompts, cfg.run.evaluate.prompts)
    rollout_blocks, train_s = longest_rollout(cfg)
    seconds = stream_seconds(train_s, args.length_factor)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out)
    walls: dict[str, float] = {}

    # 1. the shared teacher + ODE init
    shared, walls["shared_teacher_ode_init"] = shared_start(args.config, args.from_run, out, log)
    log(f"shared teacher {shared['teacher']}, init {shared['init_from']}")

    # 2. the two students, one after the other (2 cores)
    students = {}
    for name, (_, p_sf) in MODELS.items():
        if p_sf is not None:
            p_sf = args.rf_p_self_forcing if name == "rf_student" else p_sf
            students[name] = distill_student(args.config, out, name, p_sf, shared, steps, log)
            walls[f"distill_{name}"] = students[name]["wall_s"]

    # 3. the streams: same prompts, same seed (runtime.seed), same length
    log(f"streaming {seconds:g} s per prompt ({len(prompts)} prompts) for {', '.join(MODELS)}")
    walls["warm_up"] = warm_up(cfg, students["rf_student"]["export"],
                               sorted({m[0] for m in MODELS.values() if m[1] is not None}))
    sinks = drift_sinks(cfg.video.fps, cfg.run.evaluate.chunk_seconds, seconds)
    samplers: dict[str, dict] = {}
    for name, (sampler, p_sf) in MODELS.items():
        t0 = time.perf_counter()
        sub = out / "eval" / name
        if p_sf is not None:
            res = evaluate(cfg, students[name]["export"], sub, [sampler], seconds, prompts, frame_sinks=sinks)
            summary = res["samplers"][sampler]
        else:
            summary, teacher_blocks = evaluate_teacher_extended(cfg, Path(shared["teacher"]), sub, seconds, prompts,
                                                                sinks, args.teacher_prefix_blocks)
            (sub / "metrics.json").write_text(json.dumps({"samplers": {name: summary}}, indent=2, default=float))
        samplers[name] = _rebase_videos(summary, f"eval/{name}")
        walls[f"eval_{name}"] = time.perf_counter() - t0
        log(f"  {name} ({sampler}) evaluated in {walls[f'eval_{name}']:.0f} s")

    # 4. the merged result, report and JSON
    machine = machine_info()
    merged = {"checkpoint": "; ".join([f"{n}: {students[n]['export']}" for n in students]
                                      + [f"teacher_extended: {shared['teacher']}"]),
              "seconds": seconds, "prompts": prompts, "machine": machine, "samplers": samplers}
    (out / "metrics.json").write_text(json.dumps(merged, indent=2, default=float) + "\n")
    report = write_report(merged, out)
    flat = flat_metrics(merged)
    window_chunks = max(1, round(min(5.0, seconds / 2) / cfg.run.evaluate.chunk_seconds))
    models = {name: {"sampler": sampler, **model_numbers(samplers[name], flat, name, window_chunks)}
              for name, (sampler, _) in MODELS.items()}
    ratio = drift_ratio(models["rf_student"]["delta_drift_brisque"],
                        models["block_ar_student"]["delta_drift_brisque"])
    clip_blocks, prefix = s.context_blocks, args.teacher_prefix_blocks
    n_clips = len(teacher_chunk_plan(teacher_blocks, clip_blocks, prefix))
    extension = (f"chained bidirectional clips of {clip_blocks} blocks ({s.context_frames} latent frames, "
                 f"{cfg.codec.video_frames(s.context_frames) / cfg.video.fps:g} s), {cfg.sampler.teacher_steps} Euler "
                 f"steps each; every clip after the first holds the previous clip's last {prefix} block(s) fixed by "
                 f"replacement (re-noised to each step's sigma with one fixed eps) and adds {clip_blocks - prefix} "
                 f"new blocks; {n_clips} clips" if prefix else
                 f"independent bidirectional clips of {clip_blocks} blocks (no conditioning between clips); "
                 f"{n_clips} clips")
    walls["total"] = time.perf_counter() - t_total
    d = cfg.run.distill
    result = {
        "bench": "drift_comparison",
        "goal": f"rf_student ΔDrift <= {GOAL_RATIO} x block_ar_student ΔDrift (BRISQUE, first vs last 5 s)",
        "ratio_rf_over_block_ar": ratio,
        "goal_met": None if ratio is None else ratio <= GOAL_RATIO,
        "models": models,
        "stream_seconds": seconds,
        "length_factor": args.length_factor,
        "training_rollout": {"blocks": rollout_blocks, "latent_frames": rollout_blocks * s.frames_per_block,
                             "seconds": train_s,
                             "teacher_clip_seconds": cfg.codec.video_frames(s.context_frames) / cfg.video.fps},
        "prompts": prompts,
        "seed": cfg.runtime.seed,
        "teacher_extension": extension,
        "students": students,
        "shared": {**shared, "from_run": str(Path(args.from_run).resolve()) if args.from_run else None},
        "config": {"path": args.config, "model": {k: getattr(cfg.model, k) for k in ("dim", "num_layers", "num_heads")},
                   "stream": to_dict(s), "distill": {**d, "max_steps": steps}, "teacher_steps": cfg.sampler.teacher_steps,
                   "guidance_scale": cfg.sampler.guidance_scale, "codec": cfg.codec.kind, "fps": cfg.video.fps,
                   "chunk_seconds": cfg.run.evaluate.chunk_seconds},
        "machine": machine,
        "wall_s": walls,
        "report": {"html": str(report["html"]), "md": str(report["md"]), "metrics": str(out / "metrics.json"),
                   "plots": {k: str(v) for k, v in report["plots"].items()}},
    }
    text = json.dumps(result, indent=2, default=float, ensure_ascii=False)
    (out / "comparison.json").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
