"""The stages of `rollforge run`, each a function of a `StageContext` -> (outputs, metrics, info).

Layout of a run directory (everything a stage writes lives under RUN):

    RUN/config.resolved.yaml  RUN/mlflow.db  RUN/mlartifacts/     the pipeline's config and MLflow store
    RUN/stages/<stage>/       started.json / done.json, the stage's MLflow run id
    RUN/videos/               demo inputs (run.demo)            -> shard
    RUN/data/shards/          webdataset video shards           -> precompute
    RUN/data/latents/         latent + text-embedding shards    -> teacher, ode_init, distill
    RUN/<train stage>/        training run dir (checkpoints, progress.json) and its export/
    RUN/eval/                 metrics.json, videos/              (evaluate)
    RUN/export/               the published student              (export; registered in MLflow)

A training stage's config is the root config with `run.<stage>` merged into `train`, `train.stage`
set, and the teacher / init weights pointed at the upstream stages' exports when those run too.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import ConfigError

from .config import from_dict, to_dict
from .dag_state import folder_listing
from .run_config import TRAIN_STAGES
from .schema import Config
from .tracking import Tracker

EXECUTION_SECTIONS = ("tracking", "ray", "output", "run")  # how a stage runs, not what it produces
DATA_STAGES = ("shard", "precompute")
COPY_LIMIT = 1 << 30  # pretrained teachers above 1 GiB are linked into RUN/teacher/export, not copied


@dataclass
class StageContext:
    cfg: Config  # the root config, paths resolved for this run
    run_dir: Path
    parent_run_id: str | None
    status: Callable[[str], None] = field(default=lambda _msg: None)  # a short live line for the view

    def train_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    def export_dir(self, stage: str) -> Path:
        return self.train_dir(stage) / "export"


# ----------------------------------------------------------------------------- configs
def _set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"{key}: {part} is a value, not a section")
    tree[parts[-1]] = value


def _merge(dst: dict, src: dict) -> dict:
    """Deep-merge `src` into `dst`; dotted keys ("generator.lr") address nested fields."""
    for key, value in src.items():
        if "." in key:
            _set_dotted(dst, key, value)
        elif isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value)
        else:
            dst[key] = value
    return dst


def pipeline_config(cfg: Config, run_dir: Path) -> Config:
    """The root config with the run's own paths: shards/latents under RUN when the pipeline makes
    them, MLflow on RUN/mlflow.db unless `tracking.uri` names a server."""
    d = to_dict(cfg)
    stages = cfg.run.stages
    if "shard" in stages:
        d["data"]["shards"] = str(run_dir / "data" / "shards")
    if "precompute" in stages:
        d["data"]["latents"] = str(run_dir / "data" / "latents")
    if cfg.run.prompts:  # prompt-only: no videos to shard or encode
        d["data"]["prompts"] = str(Path(cfg.run.prompts).resolve())
        d["run"]["stages"] = [s for s in stages if s not in DATA_STAGES]
    if not cfg.tracking.uri:
        d["tracking"]["uri"] = f"sqlite:///{run_dir / 'mlflow.db'}"
    out = from_dict(Config, d)
    out.validate()
    return out


def upstream_weights(cfg: Config, run_dir: Path, stage: str) -> dict:
    """train.teacher / train.init_from for `stage`: the exports of the stages before it in this run."""
    stages = cfg.run.stages
    out = {}
    if stage in ("ode_init", "distill") and "teacher" in stages:
        out["teacher"] = str(run_dir / "teacher" / "export")
    if stage == "distill" and "ode_init" in stages:
        out["init_from"] = str(run_dir / "ode_init" / "export")
    return out


def stage_config(cfg: Config, run_dir: Path, stage: str, parent_run_id: str | None = None) -> Config:
    """The config a training stage runs with; errors name the `run.<stage>` key that caused them."""
    d = to_dict(cfg)
    d["train"] = _merge(copy.deepcopy(d["train"]), {**getattr(cfg.run, stage), **upstream_weights(cfg, run_dir, stage),
                                                    "stage": stage})
    d["tracking"]["parent_run_id"] = parent_run_id
    try:
        out = from_dict(Config, d)
        out.validate()
    except ConfigError as e:
        raise ConfigError(f"run.{stage} -> {e}") from None
    if stage in ("ode_init", "distill") and not out.train.teacher:
        raise ConfigError(f"run.stages: {stage} needs a teacher: include the teacher stage or set train.teacher")
    return out


def settings(cfg: Config, stage: str) -> dict:
    """What a stage's outputs depend on (its fingerprint's settings)."""
    if stage == "shard":
        r = cfg.run
        return {"videos": folder_listing(r.videos), "manifest": folder_listing(r.manifest), "demo": to_dict(r.demo),
                "fps": cfg.video.fps, "shard_size": cfg.data.shard_size, "missing_caption": cfg.data.missing_caption}
    if stage == "precompute":
        from data.precompute import config_section

        return config_section(cfg)
    if stage == "teacher" and teacher_source(cfg):
        return {"pretrained_teacher": folder_listing(teacher_source(cfg)), "model": to_dict(cfg.model),
                "teacher_model": to_dict(cfg.teacher_model)}
    if stage in TRAIN_STAGES:
        d = to_dict(cfg)
        unused = ("rollouts",) if stage == "teacher" else ()  # the teacher rolls nothing out
        return {k: v for k, v in d.items() if k not in EXECUTION_SECTIONS + unused}
    if stage == "evaluate":
        return {"evaluate": to_dict(cfg.run.evaluate), "video": to_dict(cfg.video), "stream": to_dict(cfg.stream)}
    return {"export_ema": cfg.run.export_ema, "register_model": cfg.run.register_model}


def last_train_stage(cfg: Config) -> str | None:
    trained = [s for s in cfg.run.stages if s in TRAIN_STAGES]
    return trained[-1] if trained else None


def outputs(ctx: StageContext, stage: str) -> list[Path]:
    """The paths a stage owns (cleared when it must start over, checked when it is skipped)."""
    if stage == "shard":
        return [ctx.run_dir / "videos", ctx.run_dir / "data" / "shards"]
    if stage == "precompute":
        return [ctx.run_dir / "data" / "latents"]
    if stage in TRAIN_STAGES:
        return [ctx.train_dir(stage)]
    if stage == "evaluate":
        return [ctx.run_dir / "eval"]
    return [ctx.run_dir / "export"]


# ----------------------------------------------------------------------------- stages
def run_shard(ctx: StageContext, tracker: Tracker) -> dict:
    from data.shard import shard_videos

    r = ctx.cfg.run
    source = r.videos
    if r.demo.world or r.demo.real:
        ctx.status("writing the demo datasets")
        source = str(_demo_videos(ctx))
    ctx.status(f"sharding {source or r.manifest}")
    summary = shard_videos(source, ctx.cfg.data.shards, manifest=r.manifest, shard_size=ctx.cfg.data.shard_size,
                           workers=ctx.cfg.data.workers, missing_caption=ctx.cfg.data.missing_caption,
                           ray_cfg=ctx.cfg.ray, progress=False)
    if summary["ok"] == 0:
        raise ValueError(f"shard: no usable videos in {source or r.manifest} (skipped: {summary['skipped']})")
    metrics = {"videos_ok": summary["ok"], "shards": len(summary["shards"]),
               **{f"skipped/{k}": v for k, v in summary["skipped"].items()}}
    tracker.log_artifact(Path(ctx.cfg.data.shards) / "summary.json", "shard")
    return {"metrics": metrics, "info": {}}


def _demo_videos(ctx: StageContext) -> Path:
    from data.demo_clips import collect_demo_clips
    from data.world import write_world_dataset

    d, out = ctx.cfg.run.demo, ctx.run_dir / "videos"
    if d.world:
        write_world_dataset(out / "world", count=d.world, width=d.world_size, height=d.world_size,
                            fps=ctx.cfg.video.fps, seconds=d.world_seconds, seed=ctx.cfg.data.seed,
                            vocab=d.world_vocab, cover=d.world_cover)
    if d.real:
        collect_demo_clips(out / "real")
    return out


def run_precompute(ctx: StageContext, tracker: Tracker) -> dict:
    from data.precompute import precompute

    cfg = ctx.cfg
    ctx.status(f"encoding {cfg.data.shards} -> {cfg.data.latents}")
    result = precompute(cfg, progress=False)
    tracker.log_artifact(Path(cfg.data.latents) / "manifest.json", "precompute")
    metrics = {"clips": result["count"], "latent_shards_written": len(result["written"]),
               **{f"skipped/{k}": v for k, v in result["skipped"].items()}}
    return {"metrics": metrics, "info": {"status": result["status"]}}


def run_train(ctx: StageContext, stage: str) -> dict:
    from training.export import export_checkpoint

    from .ray_train import train_with_ray

    cfg = stage_config(ctx.cfg, ctx.run_dir, stage, ctx.parent_run_id)
    if stage == "teacher" and teacher_source(ctx.cfg):
        return publish_pretrained_teacher(ctx, cfg)
    run_dir = ctx.train_dir(stage)
    ctx.status(f"{stage}: {ctx.cfg.run.learners} learner(s) under Ray Train")
    result = train_with_ray(cfg, run_dir, ctx.cfg.run.learners)
    ema = ctx.cfg.run.export_ema
    export = export_checkpoint(run_dir, ctx.export_dir(stage), ema=ema, config_type=Config)
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    with Tracker(cfg.tracking, run_dir, run_name=stage) as stage_tracker:  # the stage's own nested run
        stage_tracker.log_artifacts(export, "export_ema" if ema else "export")
        run_id = stage_tracker.run_id
    return {"metrics": metrics, "info": {"export": str(export), "mlflow_run_id": run_id}}


PRETRAINED_FILES = ("model.safetensors", "config.json", "config.yaml", "README.md")


def teacher_source(cfg: Config) -> str | None:
    """The pretrained weights the teacher stage publishes instead of training: run.pretrained_teacher;
    in a prompt-only run (no videos to train on) also teacher_model.weights, then model.weights."""
    if cfg.run.pretrained_teacher:
        return cfg.run.pretrained_teacher
    if cfg.run.prompts:
        return cfg.teacher_model.weights or cfg.model.weights
    return None


def publish_pretrained_teacher(ctx: StageContext, cfg: Config) -> dict:
    """The teacher stage without training: publish the pretrained teacher (`teacher_source`) at
    RUN/teacher/export, atomically, so downstream stages and the user find the teacher the run used
    where a trained one would be.

    An export directory (model.safetensors + config.json) is checked against teacher_model.* (and
    against model.* when the student starts from the teacher's weights) and copied, or linked when
    above 1 GiB; Wan's own weights (a .safetensors file, or a folder with a shard index) are linked
    next to a config.json recording the teacher's resolved shape."""
    from pipeline.networks.checkpoints import INDEX_FILES, check_export_model
    from training.roles import check_roles

    key = "run.pretrained_teacher" if ctx.cfg.run.pretrained_teacher else "teacher_model.weights"
    src = Path(teacher_source(ctx.cfg)).resolve()
    exported = (src / "model.safetensors").is_file()
    if exported:
        files = [src / n for n in PRETRAINED_FILES if (src / n).is_file()]
    elif src.is_file() and src.suffix == ".safetensors":
        files = [src]
    elif src.is_dir() and any((src / n).is_file() for n in INDEX_FILES):
        files = sorted(p for p in src.iterdir() if p.suffix == ".safetensors" or p.name in INDEX_FILES)
    else:
        raise FileNotFoundError(f"{key}: {src} is neither an export directory (model.safetensors + config.json, "
                                "e.g. models/world_teacher) nor Wan's weights (.safetensors, or a folder with "
                                "a *.safetensors.index.json); convert other layouts with `rollforge import`")
    try:
        roles = check_roles(cfg, src if exported else None)
        check_export_model(src, roles["teacher"], "teacher_model")
        student_from_teacher = not any(getattr(cfg.run, s).get("init_from") for s in ("ode_init", "distill")
                                       if s in cfg.run.stages) and not cfg.train.init_from
        if student_from_teacher:  # the student inherits these weights: same network, same head
            check_export_model(src, cfg.model)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
    ctx.status(f"teacher: publishing the pretrained teacher {src}")
    out = ctx.export_dir("teacher")
    tmp = out.with_name(".export.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    link = sum(f.stat().st_size for f in files) > COPY_LIMIT
    for f in files:
        name = "model.safetensors" if f.suffix == ".safetensors" and len(files) == 1 else f.name
        if link and f.suffix == ".safetensors":
            (tmp / name).symlink_to(f)
        else:
            shutil.copy2(f, tmp / name)
    if not exported:
        (tmp / "config.json").write_text(json.dumps({"model": to_dict(roles["teacher"]), "source": str(src),
                                                    "stage": "pretrained"}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    with Tracker(cfg.tracking, ctx.train_dir("teacher"), run_name="teacher") as tracker:
        tracker.log_params({"pretrained_teacher": str(src)})
        if not link:
            tracker.log_artifacts(out, "export")
        run_id = tracker.run_id
    return {"metrics": {}, "info": {"export": str(out), "pretrained": str(src), "mlflow_run_id": run_id}}


def run_evaluate(ctx: StageContext, tracker: Tracker) -> dict:
    from evaluation.evaluate import chunk_curves, drift_sinks, evaluate, flat_metrics, world_sinks
    from evaluation.report import write_report

    last = last_train_stage(ctx.cfg)
    checkpoint = ctx.export_dir(last) if last else None
    e = ctx.cfg.run.evaluate
    out = ctx.run_dir / "eval"
    sinks = drift_sinks(ctx.cfg.video.fps, e.chunk_seconds, e.seconds, e.drift_sample_every)
    prompts = e.prompts
    if e.world_prompts:
        truths = eval_world_truths(ctx.cfg)
        prompts = [t["caption"] for t in truths]
        sinks["world"] = world_sinks(truths, e.chunk_seconds, ctx.cfg.video.fps)
    args = (ctx.cfg, checkpoint, out, e.samplers, e.seconds, prompts, sinks)
    if ctx.cfg.runtime.device == "cuda":
        # The driver may sit on a CPU-only head node: stream on a GPU the cluster schedules.
        import ray

        ctx.status("streaming on a cluster GPU (Ray task)")
        result = ray.get(ray.remote(num_gpus=1)(evaluate).remote(*args))
    else:
        result = evaluate(*args, on_stream=lambda s, done, total: ctx.status(f"streamed {done}/{total} ({s})"))
    report = write_report(result, out)
    for k, metrics in chunk_curves(result).items():  # curves (mean over prompts), step = chunk index
        tracker.log_metrics(metrics, step=k)
    tracker.log_artifacts(out, "eval")
    return {"metrics": flat_metrics(result), "info": {"checkpoint": str(checkpoint) if checkpoint else None,
                                                      "report": str(report["html"])}}


def eval_world_truths(cfg, seconds: float | None = None) -> list[dict]:
    """The evaluate stage's world prompts: run.evaluate.world_prompts worlds of run.demo's vocabulary at
    the video's size, drawn with run.evaluate.world_seed, as long as the evaluated streams (or `seconds`)."""
    from data.world import world_truths

    e = cfg.run.evaluate
    return world_truths(e.world_prompts, cfg.video.width, cfg.video.height, cfg.video.fps,
                        e.seconds if seconds is None else seconds, seed=e.world_seed, vocab=cfg.run.demo.world_vocab)


def run_export(ctx: StageContext, tracker: Tracker) -> dict:
    last = last_train_stage(ctx.cfg)
    if last is None:
        raise ConfigError("run.stages: export needs a training stage (teacher, ode_init or distill) in the run")
    src, out = ctx.export_dir(last), ctx.run_dir / "export"
    tmp = out.with_name(".export.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    tracker.log_artifacts(out, "model")
    info: dict = {"source": str(src), "stage": last}
    name = ctx.cfg.run.register_model
    if name:
        ctx.status(f"registering {name} in the MLflow model registry")
        version = tracker.register_model(name, "model", {"stage": last, "run_dir": str(ctx.run_dir)})
        info.update(registered_model=name, model_version=version)
    return {"metrics": {}, "info": info}


RUNNERS: dict[str, Callable[[StageContext, Tracker], dict]] = {
    "shard": run_shard,
    "precompute": run_precompute,
    "evaluate": run_evaluate,
    "export": run_export,
}
