"""training.export against real DeepSpeed checkpoints (ZeRO-0/2/3, single process, gloo) of a tiny WanDiT.

The first DeepSpeed init on a machine JIT-builds its CPU shm comm op (~60 s, cached under
$TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions); afterwards the whole module takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from infra.config import load_config, save_resolved, to_dict
from infra.schema import Config
from pipeline.networks.wan_dit import build_dit
from training.export import ExportError
from training.export import export_checkpoint as _export_checkpoint


def export_checkpoint(*args, **kwargs):
    """The orchestration layer passes the root config type; so do the tests."""
    return _export_checkpoint(*args, config_type=Config, **kwargs)

REPO = Path(__file__).resolve().parents[2]
DS_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step(engine, nan: bool = False) -> None:
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, 3, 48, 8, 8, generator=gen), torch.full((1,), 500.0)
    text = engine.module.encode_text(torch.randn(1, 5, 384, generator=gen))
    loss = engine(x, t, text).float().pow(2).mean() * (float("nan") if nan else 1.0)
    engine.backward(loss)
    engine.step()


def _weights(engine, zero_stage: int) -> dict[str, torch.Tensor]:
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=zero_stage == 3):
        return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


def _save(engine, run_dir, cfg, zero_stage: int, step: int, ema: dict) -> None:
    ckpt = run_dir / "checkpoints" / f"step_{step:06d}"
    engine.save_checkpoint(str(ckpt / "generator"), tag="ds")
    save_file(ema, str(ckpt / "ema.safetensors"))
    (ckpt / "meta.json").write_text(json.dumps({"step": step, "stage": "teacher", "world_size": 1,
                                                "zero_stage": zero_stage}))
    (run_dir / "checkpoints" / "latest").write_text(ckpt.name + "\n")
    save_resolved(cfg, run_dir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{zero_stage: (run_dir, weights per saved step, ema)} plus a diverged (NaN) run under key "nan"."""
    import deepspeed

    saved_env = {k: os.environ.get(k) for k in DS_ENV}
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", LOCAL_RANK="0",
                      WORLD_SIZE="1")
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = load_config(Config, REPO / "configs/tiny.yaml")
    out = {}
    try:
        for zero_stage in (0, 2, 3):
            cfg.train.zero_stage = zero_stage
            run_dir = tmp_path_factory.mktemp(f"zero{zero_stage}")
            model = build_dit(cfg.model, seed=0, zero_head=False)
            engine, *_ = deepspeed.initialize(
                model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                config={"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": zero_stage},
                        "zero_allow_untested_optimizer": True})
            weights = {}
            for step in (1, 2):
                _step(engine)
                weights[step] = _weights(engine, zero_stage)
                ema = {k: (0.5 * v + 0.25).contiguous() for k, v in weights[step].items()}
                _save(engine, run_dir, cfg, zero_stage, step, ema)
            out[zero_stage] = (run_dir, weights, ema)
            if zero_stage == 0:  # plain AdamW applies a NaN step (ZeRO-1/2/3 would skip it)
                _step(engine, nan=True)
                nan_dir = tmp_path_factory.mktemp("nan")
                _save(engine, nan_dir, cfg, 0, 3, ema)
                out["nan"] = (nan_dir, {}, ema)
            del engine
        yield cfg, out
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_export_equals_engine_weights(runs, tmp_path, zero_stage):
    cfg, all_runs = runs
    run_dir, weights, _ = all_runs[zero_stage]
    init = build_dit(cfg.model, seed=0, zero_head=False).state_dict()
    assert all(not torch.equal(init[k], weights[2][k]) for k in init), "the training step changed nothing"

    out = export_checkpoint(run_dir, tmp_path / "export")
    state = load_file(str(out / "model.safetensors"))
    assert state.keys() == weights[2].keys()
    for k, v in state.items():
        assert v.dtype == torch.float32 and v.is_contiguous()
        assert torch.equal(v, weights[2][k]), k
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt", "stage": "teacher", "step": "2", "ema": "false"}
    info = json.loads((out / "config.json").read_text())
    assert info["model"] == {**to_dict(cfg.model), "weights": None}
    for key in ("video", "codec", "text", "stream", "sampler"):
        assert info[key] == to_dict(getattr(cfg, key))
    assert (info["stage"], info["step"], info["ema"], info["checkpoint"]) == ("teacher", 2, False, "step_000002")
    assert info["source_run"] == str(run_dir.resolve())
    card = (out / "README.md").read_text()
    n_params = sum(v.numel() for v in state.values())
    assert f"{n_params:,} parameters" in card and f"--checkpoint {out}" in card and "rollforge generate" in card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temp dirs left behind

    # an explicit older step
    old = load_file(str(export_checkpoint(run_dir, tmp_path / "step1", step=1) / "model.safetensors"))
    assert all(torch.equal(old[k], weights[1][k]) for k in old)
    assert not all(torch.equal(old[k], state[k]) for k in old)


def test_ema_export_and_reexport_replaces(runs, tmp_path):
    cfg, all_runs = runs
    run_dir, weights, ema = all_runs[2]
    out = export_checkpoint(run_dir, tmp_path / "out")
    (out / "stale.txt").write_text("from the first export")
    export_checkpoint(run_dir, out, ema=True)
    state = load_file(str(out / "model.safetensors"))
    assert state.keys() == ema.keys() and all(torch.equal(state[k], ema[k]) for k in ema)
    assert not torch.equal(state["head.head.weight"], weights[2]["head.head.weight"])
    assert json.loads((out / "config.json").read_text())["ema"] is True
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_generator_loads_the_export(runs, tmp_path):
    from pipeline.generator import StreamingGenerator

    cfg, all_runs = runs
    out = export_checkpoint(all_runs[3][0], tmp_path / "export")
    exported = load_file(str(out / "model.safetensors"))
    gen_cfg = load_config(Config, out / "config.yaml")  # the export's own config file
    assert gen_cfg.model == cfg.model
    gen = StreamingGenerator(gen_cfg, checkpoint=out)
    own = gen.model.state_dict()
    assert own.keys() == exported.keys() and all(torch.equal(own[k], exported[k]) for k in own)


def test_half_precision_export_loads_cast_back(runs, tmp_path):
    """--dtype float16 halves the file (the shipped world teacher); the generator loads it as fp32."""
    from pipeline.generator import StreamingGenerator

    cfg, all_runs = runs
    full = export_checkpoint(all_runs[3][0], tmp_path / "fp32")
    half = export_checkpoint(all_runs[3][0], tmp_path / "fp16", dtype="float16")
    state = load_file(str(half / "model.safetensors"))
    assert {v.dtype for v in state.values()} == {torch.float16}
    assert (half / "model.safetensors").stat().st_size < 0.6 * (full / "model.safetensors").stat().st_size
    assert json.loads((half / "config.json").read_text())["dtype"] == "float16"
    gen = StreamingGenerator(load_config(Config, half / "config.yaml"), checkpoint=half)
    own = gen.model.state_dict()
    assert all(v.dtype == torch.float32 and torch.equal(v, state[k].float()) for k, v in own.items())
    with pytest.raises(ExportError, match="float8"):
        export_checkpoint(all_runs[3][0], tmp_path / "x", dtype="float8")


def test_nan_weights_are_refused(runs, tmp_path):
    _, all_runs = runs
    with pytest.raises(ExportError, match=r"non-finite .* refusing"):
        export_checkpoint(all_runs["nan"][0], tmp_path / "out")
    assert not (tmp_path / "out").exists() and not any(tmp_path.iterdir())


def test_missing_latest_or_step_is_a_clear_error(runs, tmp_path):
    _, all_runs = runs
    run_dir = tmp_path / "run"
    shutil.copytree(all_runs[2][0], run_dir)
    (run_dir / "checkpoints" / "latest").unlink()
    with pytest.raises(ExportError, match=r"checkpoints/latest: not found"):
        export_checkpoint(run_dir, tmp_path / "out")
    with pytest.raises(ExportError, match=r"no checkpoint for step 7; available: step_000001, step_000002"):
        export_checkpoint(run_dir, tmp_path / "out", step=7)
    with pytest.raises(ExportError, match=r"not a training run dir|is .* a training run dir"):
        export_checkpoint(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mismatched_model_and_foreign_out_dir_are_refused(runs, tmp_path):
    cfg, all_runs = runs
    run_dir = tmp_path / "run"
    shutil.copytree(all_runs[2][0], run_dir)
    other = load_config(Config, REPO / "configs/tiny.yaml", ["model.num_layers=3"])
    save_resolved(other, run_dir)
    with pytest.raises(ExportError, match=r"missing key\(s\): blocks\.2\."):
        export_checkpoint(run_dir, tmp_path / "out")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_checkpoint(all_runs[2][0], foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "run"]
