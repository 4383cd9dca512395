"""Benchmark (issue 12): the Rolling Forcing paper's ablation (its Table 3), small, on the world checks.

Same teacher, same ODE init, same DMD budget. Three students are distilled from them — `rf` with the
reference's Rolling Forcing rollouts (train.p_self_forcing = 0.5), `rf_no_sink` the same without the
attention sink (stream.sink_blocks = 0) and `sf` with Self-Forcing rollouts only (p_self_forcing = 1)
— and five variants stream them (evaluation/ablation.py):

    full             rf, rolling, sink                  no_rf_inference  rf, block_ar, sink
    no_sink          rf_no_sink, rolling, no sink       no_rf_training   sf, rolling, sink
                                                        self_forcing     sf, block_ar, sink

Every variant streams the same world prompts (captions of worlds drawn with run.evaluate.world_seed,
unseen in training) with every seed, to --length-factor x the longest training rollout, and each
stream is checked against its world's ground truth per chunk. Per variant, mean ± standard error over
its streams of: drift (share of the last third's chunks failing the world checks), the world chunk
pass rate, the largest brightness change, the worst similarity to the first chunk and BRISQUE ΔDrift.
Goal (the paper's ordering): full's drift lower than every other variant's by > 2 combined s.e.

Beside the variants, the ODE-init student the three started from (`ode_init`, rolling, sink; and
`ode_init_block_ar`, block_ar, sink: the baseline of `no_rf_inference`) and the teacher itself
(`teacher`, bidirectional, one clip of its context) stream the same prompts and seeds, and each
model's first teacher-length clips are compared with the teacher's clips: Fréchet distance of
EfficientNet-Lite0 frame features (`frechet_to_teacher`, lower is closer). DMD earns its place
when `full` beats `ode_init` on that distance and on the world pass rate. The teacher also streams
the prompts with as many other noise seeds: its distance to itself is the floor no student can be
shown to beat (`baselines.teacher.frechet_to_teacher`). `full`, `no_rf_inference`, both ODE-init
baselines and the floor get paired bootstrap errors over streams (--frechet-resamples;
evaluation/frechet_bootstrap.py); `dmd_beats_ode_init.frechet_gap` is full - ode_init with its paired
error, and `dmd_beats_ode_init.block_ar` the same comparison for no_rf_inference vs ode_init_block_ar.

Steps:
  1. the shared teacher + ODE init: --from-run DIR reuses DIR/teacher/export, DIR/ode_init/export and
     DIR/data/latents (e.g. outputs/demo after `make demo`); otherwise `rollforge run --stages
     shard,precompute,teacher,ode_init` builds them in OUT/runs/base (the config's pretrained teacher);
  2. `rollforge run --stages distill,export` per student in OUT/runs/{rf,rf_no_sink,sf} (reruns skip them);
  3. the streams: OUT/eval/<variant>/seed<k>/ (videos, metrics.json, frame strips; the teacher's in
     eval/teacher and, with the floor's seeds, eval/teacher_floor);
  4. OUT/metrics.json, OUT/report.{md,html}, OUT/plots/*.png (world pass rate per chunk, one line per
     variant; frame strips) and OUT/ablation.json = the JSON object printed last.
--untrained streams random-weight students instead of training any (the plumbing at micro size).

Usage: python bench/ablation.py --json [--config configs/demo.yaml] [--from-run outputs/demo]
           [--out outputs/ablation] [--distill-steps N] [--prompts 8] [--seeds 0,1] [--length-factor 10]
           [--frechet-resamples 20]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from evaluation.ablation import (
    SE_MARGIN,
    STUDENTS,
    VARIANTS,
    longest_rollout,
    mean_se,
    ordering,
    stream_numbers,
    stream_seconds,
    summarise,
)
from infra.bench_runs import add_training_bench_args

# The ODE init also streams block by block: the like-for-like baseline of `no_rf_inference` (the DMD
# student sampled block_ar). With rolling the ODE init already sits near the teacher and passes every
# chunk, so DMD's effect shows more under block_ar (docs/BENCHMARKS.md, the ablation's warm-up section).
BASELINES = {"ode_init": "rolling", "ode_init_block_ar": "block_ar"}
# Models whose Fréchet distance to the teacher gets paired bootstrap errors: the DMD student and the ODE
# init it started from under each sampler, and the teacher's own clips of other seeds (the floor). Each
# draw costs one distance per model (~2 s on 2 CPU cores at 32 streams); the others get point values.
FRECHET_BOOTSTRAP = ("full", "ode_init", "no_rf_inference", "ode_init_block_ar", "teacher")
FRECHET_RESAMPLES = 20


def log(msg: str) -> None:
    print(f"[ablation] {msg}", file=sys.stderr, flush=True)


def parse_seeds(text: str) -> list[int]:
    seeds = [int(s) for s in text.split(",") if s.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: give distinct integers, e.g. 0,1")
    return seeds


def variant_config(cfg, sink: bool, seed: int):
    """The config a variant streams with: the run's, its seed, and without the sink when asked."""
    out = copy.deepcopy(cfg)
    out.runtime.seed = seed
    if not sink:
        out.stream.sink_blocks = 0
    out.validate()
    return out


def clip_sink(frames_per_clip: int, store: list):
    """A frame sink keeping the first `frames_per_clip` frames of every stream in `store` (one array
    [n, H, W, 3] per stream, appended when the stream finishes)."""
    import numpy as np

    def make(_sampler: str, _index: int):
        kept: list = []

        def add(frames) -> None:
            need = frames_per_clip - sum(len(f) for f in kept)
            if need > 0:
                kept.append(np.array(frames[:need], copy=True))

        def finish() -> dict:
            clip = np.concatenate(kept) if kept else np.zeros((0,), dtype=np.uint8)
            store.append(clip)
            return {"frames": int(len(clip))}
        return add, finish
    return make


def floor_seeds(seeds: list[int]) -> list[int]:
    """Noise seeds for the teacher's second set of clips (the Fréchet floor): as many as `seeds`, none of them."""
    start = max(seeds) + 1
    return list(range(start, start + len(seeds)))


def clip_features(clips: list, features) -> list:
    """Per-stream frame features [frames, d] of clips (lists of uint8 frames); empty clips stay empty."""
    import numpy as np

    return [features(c) if len(c) else np.zeros((0, 0)) for c in clips]


def merge_runs(parts: list[tuple[int, dict]], prefix: str) -> dict:
    """One variant's summary over seeds: runs of every seed (videos relative to the bench's OUT), the
    world pass rates over all of them, throughput means, and seed 0's frame strip."""
    from evaluation.world_checks import chunk_pass_rates

    runs = []
    for seed, summary in parts:
        for run in summary["runs"]:
            runs.append({**run, "seed": seed, "video": f"{prefix}/seed{seed}/{run['video']}"})
    first_seed, first = parts[0]
    merged = {"runs": runs, **{k: sum(s[k] for _, s in parts) / len(parts)
                               for k in ("fps", "first_frame_latency_s", "peak_rss_mb", "kv_cache_mb")}}
    merged.update(chunk_pass_rates([r["world"] for r in runs if isinstance(r.get("world"), dict)]))
    if first.get("strip"):
        merged["strip"] = f"{prefix}/seed{first_seed}/{first['strip']}"
    return merged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Prints one JSON object last (also OUT/ablation.json); progress on stderr.")
    add_training_bench_args(p, config="configs/demo.yaml", out="outputs/ablation")
    p.add_argument("--prompts", type=int, default=8, metavar="N", help="world prompts (default 8)")
    p.add_argument("--seeds", default="0,1", metavar="A,B", help="noise seeds per prompt (default 0,1)")
    p.add_argument("--seconds", type=float, metavar="S", help="stream length, overriding --length-factor")
    p.add_argument("--untrained", action="store_true",
                   help="stream random-weight students instead of training two (checks the plumbing in seconds)")
    p.add_argument("--frechet-resamples", type=int, default=FRECHET_RESAMPLES, metavar="N",
                   help=f"paired bootstrap draws over streams for the Fréchet errors of {', '.join(FRECHET_BOOTSTRAP)} "
                        f"(default {FRECHET_RESAMPLES}; 0: point distances only)")
    p.add_argument("--json", action="store_true", help="print only the JSON object on stdout")
    args = p.parse_args(argv)

    from evaluation.evaluate import drift_sinks, evaluate, world_sinks
    from evaluation.features import Lite0Features
    from evaluation.frechet_bootstrap import frechet_bootstrap
    from evaluation.report import write_report
    from evaluation.throughput import machine_info
    from infra.bench_runs import distill_steps, distill_student, shared_start
    from infra.config import load_config, save_resolved, to_dict
    from infra.schema import Config
    from infra.stages import eval_world_truths

    t_total = time.perf_counter()
    cfg = load_config(Config, args.config)
    s = cfg.stream
    seeds = parse_seeds(args.seeds)
    steps = distill_steps(args.distill_steps, cfg)
    if args.prompts < 1:
        raise ValueError(f"--prompts must be positive, got {args.prompts}")
    if args.frechet_resamples < 0:
        raise ValueError(f"--frechet-resamples must be >= 0, got {args.frechet_resamples}")
    rollout_blocks, train_s = longest_rollout(cfg)
    seconds = args.seconds if args.seconds else stream_seconds(train_s, args.length_factor)
    cfg.run.evaluate.world_prompts, cfg.run.evaluate.seconds = args.prompts, seconds
    truths = eval_world_truths(cfg)
    prompts = [t["caption"] for t in truths]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out)
    walls: dict[str, float] = {}

    students: dict[str, dict] = {}
    shared = None
    if args.untrained:
        students = {name: {"export": None, "p_self_forcing": st.p_self_forcing, "sink": st.sink}
                    for name, st in STUDENTS.items()}
    else:
        shared, walls["shared_teacher_ode_init"] = shared_start(args.config, args.from_run, out, log)
        for name, st in STUDENTS.items():
            no_sink = [] if st.sink else ["stream.sink_blocks=0"]
            students[name] = {**distill_student(args.config, out, name, st.p_self_forcing, shared, steps, log,
                                                overrides=no_sink), "sink": st.sink}
            walls[f"distill_{name}"] = students[name]["wall_s"]

    log(f"streaming {seconds:g} s x {len(prompts)} world prompts x {len(seeds)} seeds for {', '.join(VARIANTS)}")
    drift = drift_sinks(cfg.video.fps, cfg.run.evaluate.chunk_seconds, seconds)["drift"]  # metric models loaded once
    world = world_sinks(truths, cfg.run.evaluate.chunk_seconds, cfg.video.fps)
    clip_frames = cfg.codec.video_frames(s.context_frames)  # the teacher's clip, decoded
    clips: dict[str, list] = {}
    models = {name: (v.student, v.sampler, v.sink) for name, v in VARIANTS.items()}
    models.update({name: ("ode_init", sampler, True) for name, sampler in BASELINES.items()})
    exports = {name: st["export"] for name, st in students.items()}
    exports["ode_init"] = shared["init_from"] if shared else None
    exports["teacher"] = shared["teacher"] if shared else None
    samplers, variants, baselines = {}, {}, {}
    for name, (student, sampler, sink) in models.items():
        t0, parts, clips[name] = time.perf_counter(), [], []
        sinks = {"drift": drift, "world": world, "clip": clip_sink(clip_frames, clips[name])}
        for seed in seeds:
            res = evaluate(variant_config(cfg, sink, seed), exports[student], out / "eval" / name / f"seed{seed}",
                           [sampler], seconds, prompts, frame_sinks=sinks)
            parts.append((seed, res["samplers"][sampler]))
        samplers[name] = merge_runs(parts, f"eval/{name}")
        (variants if name in VARIANTS else baselines)[name] = summarise([stream_numbers(r) for r in samplers[name]["runs"]])
        walls[f"eval_{name}"] = time.perf_counter() - t0
        d = (variants | baselines)[name]["drift"]
        log(f"  {name}: drift {d['mean']} ± {d['se']} ({walls[f'eval_{name}']:.0f} s)")

    # the teacher's own clips of the same prompts and seeds: the reference of frechet_to_teacher; and
    # of other seeds: its floor (how far the teacher's clips are from themselves)
    t0, floor = time.perf_counter(), floor_seeds(seeds)
    teacher_clips: dict[str, list] = {"teacher": [], "teacher_floor": []}
    teacher_seconds = clip_frames / cfg.video.fps
    teacher_world = world_sinks(eval_world_truths(cfg, teacher_seconds), teacher_seconds / 3, cfg.video.fps)
    parts = []
    for role, role_seeds in (("teacher", seeds), ("teacher_floor", floor)):
        for seed in role_seeds:
            sinks = {"clip": clip_sink(clip_frames, teacher_clips[role])}
            if role == "teacher":  # the floor's streams only supply clips
                sinks["world"] = teacher_world
            res = evaluate(variant_config(cfg, True, seed), exports["teacher"], out / "eval" / role / f"seed{seed}",
                           ["bidirectional"], teacher_seconds, prompts, frame_sinks=sinks)
            if role == "teacher":
                parts.append((seed, res["samplers"]["bidirectional"]))
    teacher_summary = merge_runs(parts, "eval/teacher")
    walls["eval_teacher"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    log(f"Fréchet distances to the teacher ({args.frechet_resamples} paired bootstrap draws for "
        f"{', '.join(FRECHET_BOOTSTRAP)})")
    features = Lite0Features(num_threads=1)
    feats = {name: clip_features(c, features) for name, c in clips.items()}
    feats["teacher"] = clip_features(teacher_clips["teacher_floor"], features)
    fb = frechet_bootstrap(clip_features(teacher_clips["teacher"], features), feats, args.frechet_resamples,
                           bootstrap=FRECHET_BOOTSTRAP)
    walls["frechet"] = time.perf_counter() - t0
    for name, stats in (variants | baselines).items():
        stats["frechet_to_teacher"] = fb.stat(name)
    baselines["teacher"] = {"world_chunk_pass_rate": mean_se([stream_numbers(r)["world_chunk_pass_rate"]
                                                              for r in teacher_summary["runs"]]),
                            "frechet_to_teacher": {**fb.stat("teacher"), "seeds": floor},
                            "clip_seconds": teacher_seconds, "chunk_seconds": teacher_seconds / 3}

    machine = machine_info()
    merged = {"checkpoint": "; ".join(f"{n}: {st['export'] or 'random weights'}" for n, st in students.items()),
              "seconds": seconds, "prompts": [f"{p} (seed {sd})" for sd in seeds for p in prompts],
              "machine": machine, "samplers": samplers}
    for summary in samplers.values():  # runs in seed-major order, matching the prompt labels above
        summary["runs"].sort(key=lambda r: seeds.index(r["seed"]))
    (out / "metrics.json").write_text(json.dumps(merged, indent=2, default=float) + "\n")
    report = write_report(merged, out)
    order = ordering(variants)
    walls["total"] = time.perf_counter() - t_total
    result = {
        "bench": "ablation",
        "goal": f"full has the lowest drift, lower than every other variant by > {SE_MARGIN:g} combined s.e.",
        "goal_met": None if any(o["holds"] is None for o in order.values()) else all(o["holds"] for o in order.values()),
        "variants": variants,
        "ordering_vs_full": order,
        "baselines": baselines,
        "dmd_beats_ode_init": {
            **dmd_vs_ode_init(variants["full"], baselines["ode_init"], fb.gap("full", "ode_init")),
            # each one's distance above the teacher's own floor
            "frechet_over_floor": {"full": fb.gap("full", "teacher"), "ode_init": fb.gap("ode_init", "teacher")},
            # the same comparison with both sampled block by block
            "block_ar": dmd_vs_ode_init(variants["no_rf_inference"], baselines["ode_init_block_ar"],
                                        fb.gap("no_rf_inference", "ode_init_block_ar"))},
        "variant_settings": {n: {**asdict(v), "p_self_forcing": STUDENTS[v.student].p_self_forcing,
                                 "trained_with_sink": STUDENTS[v.student].sink} for n, v in VARIANTS.items()},
        "world_chunk_pass_rate_by_chunk": {n: samplers[n].get("world_chunk_pass_rate_by_chunk") for n in samplers},
        "world_chunk_times_s": samplers["full"].get("world_chunk_times_s"),
        "stream_seconds": seconds,
        "length_factor": None if args.seconds else args.length_factor,
        "training_rollout": {"blocks": rollout_blocks, "latent_frames": rollout_blocks * s.frames_per_block,
                             "seconds": train_s},
        "prompts": prompts,
        "world_seed": cfg.run.evaluate.world_seed,
        "seeds": seeds,
        "students": students,
        "untrained": args.untrained,
        "shared": {**(shared or {}), "from_run": str(Path(args.from_run).resolve()) if args.from_run else None},
        "config": {"path": args.config, "model": {k: getattr(cfg.model, k) for k in ("dim", "num_layers", "num_heads")},
                   "stream": to_dict(s), "distill": {**cfg.run.distill, "max_steps": steps},
                   "chunk_seconds": cfg.run.evaluate.chunk_seconds, "world_vocab": cfg.run.demo.world_vocab},
        "machine": machine,
        "wall_s": walls,
        "report": {"html": str(report["html"]), "md": str(report["md"]), "metrics": str(out / "metrics.json"),
                   "plots": {k: str(v) for k, v in report["plots"].items()}},
    }
    text = json.dumps(result, indent=2, default=float, ensure_ascii=False)
    (out / "ablation.json").write_text(text + "\n", encoding="utf-8")
    if not args.json:
        for name, m in (variants | baselines).items():
            print(f"{name:>16}: " + ", ".join(f"{k} {_pm(m[k])}" for k in m if isinstance(m[k], dict)))
        print(f"report: {report['html']}\nJSON:")
    print(text)
    return 0


def dmd_vs_ode_init(dmd: dict, ode: dict, frechet_gap: dict) -> dict:
    """Does the DMD student beat its ODE init (both streamed with one sampler)? `frechet_to_teacher`:
    closer to the teacher's clips; `world_chunk_pass_rate`: more chunks pass; `frechet_gap`: dmd - ode,
    paired over streams (FrechetBootstrap.gap)."""
    return {"frechet_to_teacher": _lower(dmd["frechet_to_teacher"]["mean"], ode["frechet_to_teacher"]["mean"]),
            "world_chunk_pass_rate": _lower(ode["world_chunk_pass_rate"]["mean"], dmd["world_chunk_pass_rate"]["mean"]),
            "frechet_gap": frechet_gap}


def _lower(a: float | None, b: float | None) -> bool | None:
    """a < b, None when either is undefined."""
    return None if a is None or b is None else a < b


def _pm(stat: dict) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.3g}" + (f" ± {stat['se']:.2g}" if stat["se"] is not None else "")


if __name__ == "__main__":
    sys.exit(main())
