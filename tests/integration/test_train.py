"""Training through `rollforge train` (2 processes, gloo, DeepSpeed ZeRO-2/3) on real precomputed latents."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from infra.config import load_config
from infra.schema import Config

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs/tiny.yaml")
pytestmark = pytest.mark.slow


def rollforge(*args, env=None, check=True):
    exe = shutil.which("rollforge") or str(Path(sys.executable).parent / "rollforge")
    proc = subprocess.run([exe, *args], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"rollforge {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def latents(tiny_latents):
    """Procedural world videos -> shards -> latents + MiniLM text (the real data path; conftest)."""
    return tiny_latents


def train(run_dir, stage, latents, *over, nproc=2, steps=4, env=None, check=True, resume=False):
    args = ["train", "--config", TINY, "--stage", stage, "--run-dir", str(run_dir), "--max-steps", str(steps),
            "--nproc", str(nproc), f"data.latents={latents}", "train.log_every=1", "train.checkpoint_every=3",
            "tracking.enabled=true", *over]
    return rollforge(*args, *(["--resume"] if resume else []), env=env, check=check)


def losses(run_dir, key="loss"):
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir}/mlflow.db")
    run_id = (Path(run_dir) / "mlflow_run_id").read_text().strip()
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)], client, run_id


def exported(run_dir, out, ema=False):
    rollforge("export", "--run-dir", str(run_dir), "--out", str(out), *(["--ema"] if ema else []))
    return load_file(str(Path(out) / "model.safetensors"))


TEACHER = ("train.zero_stage=2", "train.text_dropout=0.5")  # caption-dropout draws must resume too


@pytest.fixture(scope="module")
def teacher(latents, tmp_path_factory):
    """6 steps, 2 ranks: the teacher of the stage tests and the uninterrupted run of the resume test."""
    run = tmp_path_factory.mktemp("teacher")
    train(run, "teacher", latents, *TEACHER, steps=6)
    return run


def test_teacher_zero2_logs_to_mlflow_and_exports(teacher, tmp_path):
    values, client, run_id = losses(teacher)
    assert len(values) == 6 and all(map(lambda v: v == v and abs(v) < 1e6, values))
    run = client.get_run(run_id)
    assert run.data.params["train.zero_stage"] == "2" and run.data.params["model.dim"] == "64"
    for key in ("tokens_per_s", "lr/generator", "grad_norm/generator", "time/data", "time/compute", "loss_mean"):
        assert key in run.data.metrics, key
    assert any(a.path.endswith(".mp4") for a in client.list_artifacts(run_id, "samples"))
    ckpts = sorted(p.name for p in (teacher / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000003", "step_000006"]  # keep_last 2
    weights = exported(teacher, tmp_path / "export")
    ema = exported(teacher, tmp_path / "ema", ema=True)
    assert set(weights) == set(ema) and all(torch.isfinite(v).all() for v in weights.values())
    names = {a.path for a in client.list_artifacts(run_id, "export_ema")}
    assert "export_ema/model.safetensors" in names and "export_ema/config.json" in names


def test_export_then_generate_equals_in_memory_ema(teacher, tmp_path):
    from pipeline.generator import PromptSchedule, StreamingGenerator

    exported(teacher, tmp_path / "ema", ema=True)
    cfg = load_config(Config, teacher / "config.resolved.yaml")
    from_export = StreamingGenerator(cfg, checkpoint=tmp_path / "ema")
    in_memory = StreamingGenerator(cfg)
    ema = load_file(str(teacher / "checkpoints/step_000006/ema.safetensors"))
    in_memory.model.load_state_dict(ema)
    s = PromptSchedule.single("a red circle")
    a = torch.cat([x for _, x in from_export.stream_latents(s, 3, "rolling")], 1)
    b = torch.cat([x for _, x in in_memory.stream_latents(s, 3, "rolling")], 1)
    assert torch.equal(a, b)


def test_teacher_zero3(latents, tmp_path):
    # x0-prediction (model.prediction) trains and samples through the same engine and exports
    train(tmp_path, "teacher", latents, "train.zero_stage=3", "tracking.video_every=2", "model.prediction=x0", steps=3)
    values, client, run_id = losses(tmp_path)
    assert len(values) == 3 and all(v == v for v in values)
    videos = sorted(a.path for a in client.list_artifacts(run_id, "samples"))
    assert videos == ["samples/step_000002.mp4", "samples/step_000003.mp4"]  # EMA gathered from ZeRO-3 shards


# ZeRO-3 here; ode_init and distill under ZeRO-2 with 2 ranks run in tests/integration/test_prompt_only.py
# (prompt-only data, a sharded teacher twice the student's size), which keeps CI within its budget.
@pytest.mark.parametrize("zero", [3])
def test_ode_init_and_distill_stages(teacher, latents, tmp_path, zero):
    t = teacher / "checkpoints/step_000006/ema.safetensors"
    train(tmp_path / "ode", "ode_init", latents, f"train.zero_stage={zero}", f"train.teacher={t}",
          "train.ode_pairs=2", "train.ode_teacher_steps=6", "train.guidance_scale=1.0", steps=3)
    assert all(v == v for v in losses(tmp_path / "ode")[0])
    init = tmp_path / "ode/checkpoints/step_000003/ema.safetensors"
    # two prompts per rank; a checkpoint every step to watch the EMA (from step 0, decay 0.5)
    train(tmp_path / "dmd", "distill", latents, f"train.zero_stage={zero}", f"train.teacher={t}",
          f"train.init_from={init}", "train.rollout_blocks=7", "train.critic_updates_per_generator=2",
          "train.guidance_scale=2.0", "train.batch_size=2", "train.checkpoint_every=1", "train.keep_last=3",
          "train.ema_start=0", "train.ema_decay=0.5", steps=3)
    gen_losses = losses(tmp_path / "dmd", "loss/generator")[0]
    critic_losses = losses(tmp_path / "dmd", "loss/critic")[0]
    assert len(critic_losses) == 3 and len(gen_losses) == 1  # generator every 2nd step
    assert all(v == v for v in gen_losses + critic_losses)
    blocks = losses(tmp_path / "dmd", "rollout/blocks")[0]
    assert set(blocks) <= {6, 7}  # drawn from [context, rollout_blocks]
    assert {p.name for p in (tmp_path / "dmd/checkpoints/step_000003").iterdir()} >= {"generator", "critic"}
    ema = [load_file(str(tmp_path / f"dmd/checkpoints/step_00000{i}/ema.safetensors")) for i in (1, 2, 3)]
    start = load_file(str(init))
    same = [all(torch.equal(a[k], b[k]) for k in a) for a, b in ((start, ema[0]), (ema[0], ema[1]), (ema[1], ema[2]))]
    assert same == [True, False, True]  # the EMA moves on the generator step (2) only


def test_overfitting_a_fixed_batch_drives_the_loss_down(latents, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(sorted(latents.glob("shard-*.tar"))[0], one / "shard-000000.tar")
    train(tmp_path / "run", "teacher", one, "train.generator.lr=3.0e-3", "data.shuffle_buffer=0",
          "train.batch_size=2", nproc=1, steps=60)
    values = losses(tmp_path / "run")[0]
    assert sum(values[-8:]) / 8 < 0.7 * sum(values[:8]) / 8, values  # fresh noise and t every step


def test_resume_is_bit_identical_and_survives_a_crash_mid_save(teacher, latents, tmp_path):
    over = (*TEACHER, "train.log_every=4")  # the loss window (4 steps) spans the step-3 checkpoint
    # stopped at 3; extended to 6 with --resume, crashing while saving step 6: the step-3 checkpoint
    # stays `latest`, and a second resume finishes the run
    train(tmp_path / "run", "teacher", latents, *over, steps=3)
    crashed = train(tmp_path / "run", "teacher", latents, *over, steps=6, resume=True, check=False,
                    env={"ROLLFORGE_CRASH_DURING_SAVE": "6"})
    assert crashed.returncode != 0
    assert (tmp_path / "run/checkpoints/latest").read_text() == "step_000003"
    train(tmp_path / "run", "teacher", latents, *over, steps=6, resume=True)
    ref = exported(teacher, tmp_path / "e1")
    got = exported(tmp_path / "run", tmp_path / "e2")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    ema_ref = load_file(str(teacher / "checkpoints/step_000006/ema.safetensors"))
    ema_got = load_file(str(tmp_path / "run/checkpoints/step_000006/ema.safetensors"))
    assert all(torch.equal(ema_ref[k], ema_got[k]) for k in ema_ref)
    assert not list((tmp_path / "run/checkpoints").glob("*.partial"))
    # the mean loss at step 6 covers steps 3-6: step 3 ran before the resume, its loss came back from the checkpoint
    uninterrupted = losses(teacher)[0]
    assert losses(tmp_path / "run", "loss_mean")[0][-1] == pytest.approx(sum(uninterrupted[2:6]) / 4, rel=1e-6)
    # a constant rate resumed into a new rate and a decay: lr 8e-5 * (1 - s/8), placed at the saved step
    train(tmp_path / "run", "teacher", latents, *over, "train.generator.lr=8e-5", "train.generator.decay=linear",
          "train.generator.decay_steps=8", steps=7, resume=True)
    lrs, _, _ = losses(tmp_path / "run", "lr/generator")
    assert lrs[0] == pytest.approx(1e-4) and lrs[-1] == pytest.approx(8e-5 * (1 - 7 / 8))


def test_non_finite_losses_are_skipped_then_abort_without_checkpoint(latents, tmp_path):
    """Latents poisoned with NaN: each step is skipped and counted; K in a row stops the run."""
    import webdataset as wds
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    bad = tmp_path / "bad"
    bad.mkdir()
    src = sorted(latents.glob("shard-*.tar"))[0]
    with wds.TarWriter(str(bad / "shard-000000.tar")) as sink:
        for sample in wds.WebDataset(str(src), shardshuffle=False):
            lat = st_load(sample["latent.safetensors"])["latent"]
            sample = {k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
            sample["latent.safetensors"] = st_save({"latent": torch.full_like(lat, float("nan"))})
            sink.write(sample)
    proc = train(tmp_path / "run", "teacher", bad, "train.max_nonfinite=3", nproc=1, steps=6, check=False)
    assert proc.returncode != 0 and "non-finite losses in a row" in proc.stderr
    assert not (tmp_path / "run/checkpoints").exists() or not list((tmp_path / "run/checkpoints").glob("step_*"))


def test_a_rank_error_under_nproc_is_one_clear_line_last(tmp_path):
    """Both ranks fail on the missing latents: one clear line ends stderr, with the CLI's exit code."""
    proc = rollforge("train", "--config", TINY, "--stage", "teacher", "--run-dir", str(tmp_path / "run"),
                     "--nproc", "2", "--max-steps", "1", f"data.latents={tmp_path / 'none'}",
                     "tracking.enabled=false", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("rollforge: error: data.latents=") and "no latent shards" in lines[-1]
    assert sum(line.startswith("rollforge: error") for line in lines) == 1
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr
