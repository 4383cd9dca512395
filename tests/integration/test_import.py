"""`rollforge import` / `rollforge export --format diffusers` on tiny checkpoints in each reference layout.

The .pt files are laid out as TencentARC/RollingForcing and guandeh17/Self-Forcing save them
(trainer/distillation.py `save()`: {"generator", "critic", "generator_ema"}; trainer/ode.py: {"generator"}),
keys `model.<wan key>` from WanDiffusionWrapper, the EMA with FSDP wrapper segments left in its names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers_keys import diffusers_script_rename
from safetensors.torch import load_file, save_file

from infra.cli import main
from infra.config import load_config, save_resolved, to_dict
from infra.schema import Config
from pipeline.generator import PromptSchedule, StreamingGenerator
from pipeline.networks.wan_dit import build_dit

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs/tiny.yaml")


def rf_names(state: dict, fsdp: bool = False) -> dict:
    """WanDiffusionWrapper names: `model.` + Wan key; EMA_FSDP keeps nested FSDP/checkpoint wrappers."""
    def name(k: str) -> str:
        if fsdp and k.startswith("blocks."):
            i, rest = k.split(".", 2)[1:]
            return f"model.blocks.{i}._fsdp_wrapped_module._checkpoint_wrapped_module.{rest}"
        return "model." + k
    return {name(k): v.clone() for k, v in state.items()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """cfg, weights, EMA weights, and the reference files written from them."""
    root = tmp_path_factory.mktemp("refs")
    cfg = load_config(Config, TINY)
    raw = {k: v.detach().clone() for k, v in build_dit(cfg.model, seed=1, zero_head=False).state_dict().items()}
    ema = {k: v + 0.01 * torch.randn_like(v) for k, v in raw.items()}
    critic = {k: v * 2 for k, v in raw.items()}
    torch.save({"generator": rf_names(raw), "critic": rf_names(critic), "generator_ema": rf_names(ema, fsdp=True)},
               root / "rolling_forcing_dmd.pt")
    torch.save({"generator": rf_names(raw)}, root / "ode_init.pt")  # Self-Forcing's ODE stage saves no EMA
    return cfg, raw, ema, root


def run(*args) -> int:
    return main(["import", *map(str, args)])


def weights(out: Path) -> dict:
    return load_file(str(out / "model.safetensors"))


def assert_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, bad[:5]


def stream(cfg, checkpoint=None, state=None, blocks: int = 2) -> torch.Tensor:
    gen = StreamingGenerator(cfg, checkpoint=checkpoint)
    if state is not None:
        gen.model.load_state_dict(state)
    return torch.cat([x for _, x in gen.stream_latents(PromptSchedule.single("a red ball bouncing"), blocks)])


def test_rolling_forcing_import_is_exact_and_streams_the_same(tiny, tmp_path):
    cfg, raw, _, root = tiny
    out = tmp_path / "rf"
    assert run("--from", "rolling-forcing", "--input", root / "rolling_forcing_dmd.pt", "--out", out,
               "--config", TINY) == 0
    assert_equal(weights(out), raw)
    info = json.loads((out / "config.json").read_text())
    assert info["model"] == {**to_dict(cfg.model), "weights": None}
    assert info["imported_from"]["key"] == "generator" and info["ema"] is False
    gen_cfg = load_config(Config, out / "config.yaml")
    torch.testing.assert_close(stream(gen_cfg, checkpoint=out), stream(cfg, state=raw), rtol=0, atol=0)


def test_ema_picks_generator_ema_and_is_refused_without_one(tiny, tmp_path, capsys):
    cfg, raw, ema, root = tiny
    assert run("--from", "rolling-forcing", "--input", root / "rolling_forcing_dmd.pt", "--out", tmp_path / "ema",
               "--ema", "--config", TINY) == 0
    assert_equal(weights(tmp_path / "ema"), ema)  # FSDP segments stripped
    assert json.loads((tmp_path / "ema" / "config.json").read_text())["imported_from"]["key"] == "generator_ema"

    assert run("--from", "self-forcing", "--input", root / "ode_init.pt", "--out", tmp_path / "sf", "--ema") == 2
    assert "no 'generator_ema'" in capsys.readouterr().err
    assert not (tmp_path / "sf").exists()
    # tiny.yaml's dim is 64 = the default config's: its 4 heads are taken (no --num-heads needed)
    assert run("--from", "self-forcing", "--input", root / "ode_init.pt", "--out", tmp_path / "sf") == 0
    assert_equal(weights(tmp_path / "sf"), raw)


def test_num_heads_default_and_flag(tiny, tmp_path, capsys):
    cfg, raw, _, root = tiny
    # a config of another width: heads cannot come from it, and 64 is no multiple of Wan's head dim 128
    assert run("--from", "self-forcing", "--input", root / "ode_init.pt", "--out", tmp_path / "a",
               "--config", TINY, "model.dim=128", "model.num_heads=8") == 2
    assert "pass --num-heads" in capsys.readouterr().err
    assert run("--from", "self-forcing", "--input", root / "ode_init.pt", "--out", tmp_path / "a",
               "--config", TINY, "model.dim=128", "model.num_heads=8", "--num-heads", "2") == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["model"]["num_heads"] == 2


def test_non_tensor_pickles_and_random_files_are_refused(tiny, tmp_path, capsys):
    cfg, raw, _, root = tiny
    evil = tmp_path / "evil.pt"
    torch.save({"generator": rf_names(raw), "trainer": Path("/etc")}, evil)  # any pickled object
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint at all" * 10)
    no_gen = tmp_path / "no_gen.pt"
    torch.save({"optimizer": {"lr": 1.0}}, no_gen)
    strings = tmp_path / "strings.pt"
    torch.save({"generator": {"model.patch_embedding.weight": "oops"}}, strings)
    cases = {evil: r"evil\.pt: not a weights-only torch checkpoint",
             junk: r"junk\.pt: not a weights-only torch checkpoint",
             no_gen: r"no_gen\.pt: no 'generator' state dict \(a dict with keys 'optimizer'\)",
             strings: r"strings\.pt \['generator'\]: .* not tensors, e\.g\. 'model\.patch_embedding\.weight': str"}
    import re
    for path, pattern in cases.items():
        assert run("--from", "rolling-forcing", "--input", path, "--out", tmp_path / "out") == 2, path
        assert re.search(pattern, capsys.readouterr().err), path
    assert run("--from", "diffusers", "--input", root / "ode_init.pt", "--out", tmp_path / "out") == 2
    assert "not a directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def diffusers_folder(path: Path, state: dict, cfg, shards: int = 2) -> Path:
    """A WanTransformer3DModel folder built independently: diffusers' own rename, sharded with an index."""
    path.mkdir(parents=True)
    renamed = {diffusers_script_rename(k): v.to(torch.bfloat16) for k, v in state.items()}
    names = sorted(renamed)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        fname = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: renamed[k] for k in part}, str(path / fname))
        weight_map.update(dict.fromkeys(part, fname))
    (path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    m = cfg.model
    (path / "config.json").write_text(json.dumps({
        "_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0.dev0", "added_kv_proj_dim": None,
        "attention_head_dim": m.dim // m.num_heads, "cross_attn_norm": True, "eps": 1e-6, "ffn_dim": m.ffn_dim,
        "freq_dim": m.freq_dim, "image_dim": None, "in_channels": m.in_dim, "num_attention_heads": m.num_heads,
        "num_layers": m.num_layers, "out_channels": m.out_dim, "patch_size": list(m.patch_size),
        "pos_embed_seq_len": None, "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024,
        "text_dim": m.text_dim}))
    return path


def test_independent_diffusers_folder_imports(tiny, tmp_path):
    cfg, raw, _, _ = tiny
    folder = diffusers_folder(tmp_path / "pipe" / "transformer", raw, cfg)  # a pipeline root works too
    assert run("--from", "diffusers", "--input", tmp_path / "pipe", "--out", tmp_path / "out", "--config", TINY,
               "--dtype", "bfloat16") == 0
    assert folder.is_dir()
    assert_equal(weights(tmp_path / "out"), {k: v.to(torch.bfloat16) for k, v in raw.items()})
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model"] == {**to_dict(cfg.model),
                                                                                   "weights": None}


def fake_run(cfg, state: dict, run_dir: Path) -> Path:
    """A training run dir whose latest checkpoint holds `state` as its EMA (no DeepSpeed needed)."""
    ckpt = run_dir / "checkpoints" / "step_000003"
    ckpt.mkdir(parents=True)
    save_file(state, str(ckpt / "ema.safetensors"))
    (ckpt / "meta.json").write_text(json.dumps({"step": 3, "stage": "distill"}))
    (run_dir / "checkpoints" / "latest").write_text(ckpt.name + "\n")
    save_resolved(cfg, run_dir)
    return run_dir


def test_export_diffusers_and_back_is_lossless(tiny, tmp_path, capsys):
    cfg, raw, _, _ = tiny
    run_dir = fake_run(cfg, raw, tmp_path / "run")
    out = tmp_path / "diff"
    assert main(["export", "--run-dir", str(run_dir), "--out", str(out), "--ema", "--format", "diffusers"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "config.yaml",
                                                     "diffusion_pytorch_model.safetensors"]
    dcfg = json.loads((out / "config.json").read_text())
    assert dcfg["_class_name"] == "WanTransformer3DModel" and dcfg["num_attention_heads"] == cfg.model.num_heads
    assert dcfg["_rollforge"]["stage"] == "distill" and dcfg["_rollforge"]["model"]["num_heads"] == 4
    # the same keys diffusers' conversion script produces from Wan's
    assert_equal(load_file(str(out / "diffusion_pytorch_model.safetensors")),
                 {diffusers_script_rename(k): v for k, v in raw.items()})

    # back to Wan's layout: no --config, so the sections ride back from `_rollforge`
    assert run("--from", "diffusers", "--input", out, "--out", tmp_path / "wan") == 0
    assert_equal(weights(tmp_path / "wan"), raw)
    info = json.loads((tmp_path / "wan" / "config.json").read_text())
    assert info["model"] == {**to_dict(cfg.model), "weights": None} and info["stage"] == "distill"
    gen_cfg = load_config(Config, tmp_path / "wan" / "config.yaml")
    torch.testing.assert_close(stream(gen_cfg, checkpoint=tmp_path / "wan"), stream(cfg, state=raw), rtol=0, atol=0)

    # a wan export of the same run equals it; an x0 model is refused for diffusers (it would read as flow)
    assert main(["export", "--run-dir", str(run_dir), "--out", str(tmp_path / "w"), "--ema"]) == 0
    assert_equal(weights(tmp_path / "w"), raw)
    x0_run = fake_run(load_config(Config, TINY, ["model.prediction=x0"]), raw, tmp_path / "x0run")
    assert main(["export", "--run-dir", str(x0_run), "--out", str(tmp_path / "x0"), "--ema", "--format", "diffusers"]) == 2
    assert "model.prediction=x0" in capsys.readouterr().err.strip().splitlines()[-1]  # one clear line
