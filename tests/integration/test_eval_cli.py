"""`rollforge eval` as a user runs it: a subprocess of the installed entry point on the tiny config."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from infra.cli_eval import read_prompts
from conftest import rollforge

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs/tiny.yaml")
PLOTS = ("quality", "similarity_to_first", "flicker", "colour", "similarity_vs_dt", "throughput")


class Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href")]


def test_eval_help():
    out = rollforge("eval", "--help").stdout
    for flag in ("--config", "--checkpoint", "--samplers", "--seconds", "--prompts", "--chunk-seconds", "--out",
                 "run.evaluate"):
        assert flag in out


def test_eval_refuses_teacher_beyond_its_context(tmp_path):
    """tiny: context 18 latent frames = 18 video frames = 1.125 s at 16 fps; checked before any model loads."""
    proc = rollforge("eval", "--config", TINY, "--samplers", "rolling,bidirectional", "--seconds", "3",
                     "--out", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2
    assert "bidirectional" in proc.stderr and "--seconds <= 1.125" in proc.stderr
    proc = rollforge("eval", "--config", TINY, "--samplers", "rolling,nope", "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and "unknown sampler 'nope'" in proc.stderr


def test_read_prompts(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a red ball\n\n# a comment\n  a blue cube  \n")
    assert read_prompts(txt) == ["a red ball", "a blue cube"]
    yml = tmp_path / "p.yaml"
    yml.write_text("- a red ball\n- 'a: colon'\n")
    assert read_prompts(yml) == ["a red ball", "a: colon"]
    js = tmp_path / "p.json"
    js.write_text(json.dumps(["one", "two"]))
    assert read_prompts(js) == ["one", "two"]
    js.write_text(json.dumps({"prompt": "x"}))
    with pytest.raises(ValueError, match="list of prompt strings"):
        read_prompts(js)
    with pytest.raises(FileNotFoundError):
        read_prompts(tmp_path / "missing.txt")


@pytest.mark.slow  # ~21-25 s on 2 busy cores (model, BRISQUE, EfficientNet, MLflow's SQLite setup)
@pytest.mark.filterwarnings("ignore::DeprecationWarning:mlflow.*")  # SQLAlchemy's, inside MLflow's store
def test_eval_writes_report_and_mlflow_run(tmp_path):
    out = tmp_path / "eval"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a green square on a grey background\n")
    proc = rollforge("eval", "--config", TINY, "--seconds", "2", "--samplers", "rolling,block_ar",
                     "--prompts", str(prompts), "--out", str(out), "tracking.enabled=true")
    assert "random" in proc.stderr  # no --checkpoint: the warning
    assert f"report:   {out / 'report.html'}" in proc.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["samplers"]) == ["rolling", "block_ar"] and metrics["prompts"] == ["a green square on a grey background"]
    for sampler, summary in metrics["samplers"].items():
        (run,) = summary["runs"]
        assert (out / run["video"]).is_file() and run["video"] == f"videos/{sampler}_0.mp4"
        drift = run["drift"]
        assert drift["num_frames"] == 33 and drift["num_chunks"] == 3  # 11 blocks of 3 frames at 16 fps
        assert drift["quality"]["name"] == "brisque" and drift["consistency"]["similarity_to_first"][0] == pytest.approx(1.0)
        assert summary["fps"] > 0

    page = (out / "report.html").read_text(encoding="utf-8")
    parser = Refs()
    parser.feed(page)
    assert parser.refs and all((out / ref).is_file() for ref in parser.refs)
    for name in PLOTS:
        with Image.open(out / "plots" / f"{name}.png") as im:
            im.verify()
    assert "| rolling |" in (out / "report.md").read_text(encoding="utf-8")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("rollforge")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "eval" and run.info.status == "FINISHED"
    m = run.data.metrics
    for key in ("rolling/fps", "block_ar/fps", "rolling/first_frame_latency_s", "rolling/quality_drift",
                "block_ar/similarity_last_to_first", "rolling/flicker"):
        assert key in m, key
    assert m["rolling/fps"] > 0
    assert run.data.params["run.evaluate.seconds"] == "2.0"
    assert len(client.get_metric_history(run.info.run_id, "rolling/chunk_flicker")) == 3
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "report.md", "metrics.json", "plots", "videos"} <= artifacts


@pytest.mark.slow  # ~15 s: one 1 s stream per world with the drift metrics
def test_eval_checks_world_ground_truth(tmp_path):
    from data.world import write_world_dataset

    write_world_dataset(tmp_path / "worlds", count=3, width=32, height=32, fps=16, seconds=1.0, seed=3)
    out = tmp_path / "out"
    rollforge("eval", "--config", TINY, "--world", str(tmp_path / "worlds"), "--world-count", "2", "--seconds", "1",
              "--samplers", "rolling", "--out", str(out), "tracking.enabled=false", "run.evaluate.drift_sample_every=2",
              "run.evaluate.timed_prompts=1")
    truths = [json.loads(p.read_text()) for p in sorted((tmp_path / "worlds").glob("*.gt.json"))[:2]]
    summary = json.loads((out / "metrics.json").read_text())["samplers"]["rolling"]
    runs = summary["runs"]
    assert [r["prompt"] for r in runs] == [t["caption"] for t in truths]
    # only the first prompt is timed (run.evaluate.timed_prompts=1); every prompt is still scored
    assert runs[1]["throughput"] is None and summary["timed_prompts"] == 1 and summary["fps"] > 0
    for r in runs:  # random weights draw no objects: the check must run and say so, per chunk
        assert r["world"]["num_frames"] == runs[0]["throughput"]["video_frames"] and r["world"]["passed"] is False
        # the image-model drift metrics score every 2nd frame; the world checks still see every frame
        assert r["drift"]["sample_every"] == 2 and r["drift"]["num_frames"] == r["world"]["num_frames"]
    chunks = sum(len(r["world"]["chunks"]) for r in runs)
    passed = sum(c["passed"] for r in runs for c in r["world"]["chunks"])
    assert summary["world_chunk_pass_rate"] == passed / chunks and len(summary["world_chunk_pass_rate_by_chunk"]) == 2
    report = (out / "report.md").read_text()
    assert "world chunks passed" in report and "plots/world_pass_rate.png" in report and "strip_rolling.png" in report
    proc = rollforge("eval", "--config", TINY, "--world", str(tmp_path / "worlds"), "--prompts", "x.txt",
                     "--out", str(out), check=False)
    assert proc.returncode == 2 and "give one" in proc.stderr
