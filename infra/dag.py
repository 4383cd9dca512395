"""`rollforge run`: the whole pipeline as one MLflow parent run with a nested run per stage.

    shard -> precompute -> teacher -> ode_init -> distill -> evaluate -> export   (cfg.run.stages)

Each stage is skipped when its complete outputs exist for the same fingerprint (`dag_state`), so
rerunning a finished run does nothing and rerunning an interrupted one resumes: data stages are
idempotent, training stages restart from their latest checkpoint under Ray Train. The parent run
keeps its id in RUN/mlflow_run_id, each stage's nested run in its own directory, so a resumed
pipeline continues the same MLflow runs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from .config import flatten, save_resolved, to_dict
from .dag_state import StageRecord, fingerprint
from .distributed import init_ray
from .live import LiveView
from .run_config import TRAIN_STAGES
from .schema import Config
from .stages import RUNNERS, StageContext, outputs, pipeline_config, run_train, settings, stage_config
from .tracking import Tracker

log = logging.getLogger("rollforge.run")


def plan(cfg: Config, run_dir: Path) -> list[tuple[str, str, bool]]:
    """[(stage, fingerprint, complete)] in order; fingerprints chain through the stages.

    Building every training stage's config here (and checking the evaluation) makes a bad
    `run.<stage>` fail before anything runs."""
    if "evaluate" in cfg.run.stages:
        from .cli_eval import check_teacher_length

        check_teacher_length(cfg, cfg.run.evaluate.samplers, cfg.run.evaluate.seconds)
    out, previous = [], None
    for stage in cfg.run.stages:
        stage_cfg = stage_config(cfg, run_dir, stage) if stage in TRAIN_STAGES else cfg
        fp = fingerprint(stage, settings(stage_cfg, stage), previous)
        out.append((stage, fp, StageRecord(run_dir, stage).is_complete(fp)))
        previous = fp
    return out


def run_pipeline(cfg: Config, run_dir: str | Path, console=None) -> dict:
    """Run (or resume) the pipeline in `run_dir`; returns {stage: done record}."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = pipeline_config(cfg, run_dir)
    steps = plan(cfg, run_dir)
    save_resolved(cfg, run_dir)
    parent = Tracker(cfg.tracking, run_dir, run_name="pipeline", tags={"rollforge.run_dir": str(run_dir)})
    parent.log_params(flatten(to_dict(cfg)))
    records: dict[str, dict] = {}
    if not all(complete for _, _, complete in steps):
        init_ray(cfg.ray)  # a finished run reruns in seconds: no Ray
    try:
        with LiveView([s for s, _, _ in steps], run_dir, console) as view:
            for stage, fp, complete in steps:
                record = StageRecord(run_dir, stage)
                if complete:
                    records[stage] = record.done()
                    view.set(stage, "skipped", "complete for this config")
                    continue
                records[stage] = _run_stage(cfg, run_dir, stage, fp, record, parent, view)
                parent.log_metrics({f"{stage}/{k}": v for k, v in records[stage].get("metrics", {}).items()},
                                   step=0)
        parent.set_tags({"rollforge.stages": ",".join(s for s, _, _ in steps),
                         "rollforge.skipped": ",".join(s for s, _, c in steps if c)})
        parent.close("FINISHED")
    except BaseException as e:
        parent.close("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    return records


def _run_stage(cfg: Config, run_dir: Path, stage: str, fp: str, record: StageRecord, parent: Tracker,
               view: LiveView) -> dict:
    ctx = StageContext(cfg, run_dir, parent.run_id, status=lambda msg: view.status(stage, msg))
    outs = outputs(ctx, stage)
    resumed = record.start(fp, outs)
    view.set(stage, "running", "resuming" if resumed else "",
             progress_dir=ctx.train_dir(stage) if stage in TRAIN_STAGES else None)
    start = time.perf_counter()
    try:
        if stage in TRAIN_STAGES:
            # train_loop opens the nested run itself (tracking.parent_run_id) inside the learners
            result = run_train(ctx, stage)
        else:
            stage_tracking = dataclasses.replace(cfg.tracking, parent_run_id=parent.run_id)
            with Tracker(stage_tracking, record.dir, run_name=stage) as tracker:
                tracker.log_params(flatten({"stage": stage, "settings": settings(cfg, stage)}))
                result = RUNNERS[stage](ctx, tracker)
                tracker.log_metrics(result["metrics"], step=0)
                result["info"]["mlflow_run_id"] = tracker.run_id
    except BaseException:
        view.set(stage, "failed", f"see the log above; rerun `rollforge run` to resume ({run_dir})")
        raise
    took = time.perf_counter() - start
    done = record.finish(fp, outs, {"seconds": took, "metrics": result["metrics"], **result["info"]})
    view.set(stage, "done", _summary(stage, result))
    return done


def _summary(stage: str, result: dict) -> str:
    m, info = result["metrics"], result["info"]
    if stage == "shard":
        return f"{int(m.get('videos_ok', 0))} videos in {int(m.get('shards', 0))} shards"
    if stage == "precompute":
        return f"{int(m.get('clips', 0))} clips encoded"
    if stage == "teacher" and info.get("pretrained"):
        return f"pretrained {info['pretrained']}; export {info.get('export')}"
    if stage in TRAIN_STAGES:
        loss = m.get("loss_mean")  # mean over the last log_every steps; one step's loss is noise
        return f"step {int(m.get('step', 0))}" + (f", mean loss {loss:.4f}" if loss is not None else "") + \
            f"; export {info.get('export')}"
    if stage == "evaluate":
        fps = {k.split("/")[0]: v for k, v in m.items() if k.endswith("/fps")}
        world = {k.split("/")[0]: v for k, v in m.items() if k.endswith("/world_chunk_pass_rate")}
        return ", ".join(f"{s} {v:.1f} fps" + (f", world checks {100 * world[s]:.0f} % of chunks" if s in world else "")
                         for s, v in fps.items())
    if info.get("registered_model"):
        return f"registered {info['registered_model']} v{info['model_version']}"
    return ""
