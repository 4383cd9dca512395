"""infra.tracking.Tracker against a real MLflow SQLite store (read back with MlflowClient)."""

from __future__ import annotations

import logging
import time

import pytest

from infra.config import flatten, to_dict
from infra.schema import Config
from infra.tracking import MAX_PARAM_VALUE, RUN_ID_FILE, Tracker
from training.config import TrackingConfig


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_logs_params_metrics_artifacts_tags_and_resumes(tmp_path, caplog):
    run_dir = tmp_path / "run"
    cfg = Config()
    cfg.sampler.negative_prompt = "blurry " * 200  # 1400 chars > MLflow's param value limit
    params = {**to_dict(cfg), "extra": {f"k{i}": i for i in range(30)}}  # > 100 keys: two batches

    tr = Tracker(TrackingConfig(experiment="unit"), run_dir, "teacher", tags={"stage": "teacher"})
    run_id = tr.run_id
    assert run_id and (run_dir / RUN_ID_FILE).read_text().strip() == run_id
    assert tr.uri == f"sqlite:///{run_dir.resolve()}/mlflow.db"
    tr.log_params(params)
    tr.log_metrics({"loss": 0.5, "lr": 1e-4}, step=1)
    tr.log_metrics({"loss": 0.25, "nan": float("nan"), "inf": float("inf")}, step=2)
    (tmp_path / "sample.txt").write_text("hello")
    tr.log_artifact(tmp_path / "sample.txt", artifact_path="samples")
    tr.set_tags({"git": "abc123"})
    tr.close()
    assert tr.run_id is None

    client = _client(tr.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "teacher"
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "unit"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # `mlflow ui` opens the runs view
    p = run.data.params
    assert len(p) == len(flatten(params)) > 100
    assert p["model.dim"] == "64" and p["train.stage"] == "teacher" and p["extra.k29"] == "29"
    assert p["stream.denoising_steps"] == "[1000, 750, 500, 250]"
    assert p["text.path"] == "None"
    long = p["sampler.negative_prompt"]
    assert len(long) == MAX_PARAM_VALUE and long.endswith("...") and long.startswith("blurry blurry")
    loss = client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in loss) == [(1, 0.5), (2, 0.25)]
    assert "nan" not in run.data.metrics and "inf" not in run.data.metrics
    assert run.data.tags["stage"] == "teacher" and run.data.tags["git"] == "abc123"
    assert [a.path for a in client.list_artifacts(run_id, "samples")] == ["samples/sample.txt"]
    assert (run_dir / "mlartifacts").is_dir()  # the sqlite default keeps artifacts in the run dir
    assert any(f.name == "sample.txt" for f in (run_dir / "mlartifacts").rglob("*"))

    # Resume: the same run continues; same params are accepted, a changed one is kept and warned about.
    with caplog.at_level(logging.WARNING, logger="rollforge.tracking"):
        with Tracker(TrackingConfig(experiment="unit"), run_dir, "teacher") as tr2:
            assert tr2.run_id == run_id
            assert client.get_run(run_id).info.status == "RUNNING"
            params["model"]["dim"] = 128
            tr2.log_params(params)
            tr2.log_metrics({"loss": 0.125}, step=3)
            assert tr2.run_id == run_id  # still active after the changed param
            # A nested tracker in the same store coexists with its parent.
            child = Tracker(TrackingConfig(uri=tr.uri, experiment="unit"), tmp_path / "child", "eval",
                            parent_run_id=run_id)
            child.log_metrics({"fvd": 1.0}, step=0)
            child.close()
            tr2.log_metrics({"loss": 0.0625}, step=4)
    assert [r.getMessage() for r in caplog.records if "model.dim" in r.getMessage()]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.dim"] == "64"
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2, 3, 4]
    kid = client.get_run(child._run_id)
    assert kid.data.tags["mlflow.parentRunId"] == run_id and kid.data.metrics == {"fvd": 1.0}
    assert not (tmp_path / "child" / "mlflow.db").exists()


def test_failed_status_on_exception(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError), Tracker(TrackingConfig(), run_dir, "boom") as tr:
        run_id = tr.run_id
        raise RuntimeError("training diverged")
    assert _client(tr.uri).get_run(run_id).info.status == "FAILED"


@pytest.mark.parametrize("enabled,rank", [(False, 0), (True, 1)])
def test_disabled_or_other_rank_writes_nothing(tmp_path, enabled, rank):
    tr = Tracker(TrackingConfig(enabled=enabled), tmp_path / "run", "x", rank=rank)
    (tmp_path / "a.txt").write_text("a")
    tr.log_params({"a": 1})
    tr.log_metrics({"loss": 1.0}, step=1)
    tr.log_artifact(tmp_path / "a.txt")
    tr.log_artifacts(tmp_path)
    tr.set_tags({"t": 1})
    tr.close()
    assert tr.run_id is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_unreachable_server_warns_once_and_never_raises(tmp_path, caplog):
    start = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="rollforge.tracking"):
        tr = Tracker(TrackingConfig(uri="http://127.0.0.1:9"), tmp_path / "run", "x")
        tr.log_params({"a": 1, "b": {"c": 2}})
        for step in range(5):
            tr.log_metrics({"loss": 1.0}, step=step)
        (tmp_path / "a.txt").write_text("a")
        tr.log_artifact(tmp_path / "a.txt")
        tr.set_tags({"t": 1})
        tr.close("FAILED")
    assert time.perf_counter() - start < 15
    mine = [r for r in caplog.records if r.name == "rollforge.tracking"]
    assert len(mine) == 1, [r.getMessage() for r in mine]
    assert "http://127.0.0.1:9" in mine[0].getMessage() and "disabled" in mine[0].getMessage()
    assert tr.run_id is None


def test_an_existing_experiment_gets_the_training_kind(tmp_path):
    """An experiment made elsewhere (MLflow infers GenAI for untagged ones) is tagged when we log to it."""
    uri = f"sqlite:///{(tmp_path / 'run').resolve()}/mlflow.db"
    (tmp_path / "run").mkdir()
    exp_id = _client(uri).create_experiment("made-before")
    Tracker(TrackingConfig(experiment="made-before"), tmp_path / "run", "teacher").close()
    assert _client(uri).get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"

