"""`rollforge export`: a training checkpoint -> a self-contained generator checkpoint directory.

    export_checkpoint(run_dir, out_dir, ema=False, step=None, format="wan")

Reads the trainer's layout:

    RUN_DIR/config.resolved.yaml                the run's resolved root config
    RUN_DIR/checkpoints/latest                  name of the newest complete checkpoint dir
    RUN_DIR/checkpoints/step_000006/meta.json   {"step": 6, "stage": "teacher", "zero_stage": 2, ...}
    RUN_DIR/checkpoints/step_000006/generator/  DeepSpeed engine.save_checkpoint(..., tag="ds")
    RUN_DIR/checkpoints/step_000006/ema.safetensors

and writes, atomically (temp dir, then rename), what `StreamingGenerator(cfg, checkpoint=OUT)` loads:

    OUT/model.safetensors   contiguous weights (fp32; `dtype` float16 / bfloat16 halve the file), Wan key layout
    OUT/config.json         generator sections of the run's config + stage/step/ema/source_run
    OUT/config.yaml         the same sections as a config file for `rollforge generate --config`
    OUT/README.md           a short model card

`format="diffusers"` writes a diffusers `WanTransformer3DModel` folder instead (keys renamed by
`pipeline.networks.layouts.wan_to_diffusers`):

    OUT/diffusion_pytorch_model.safetensors   diffusers key layout
    OUT/config.json         diffusers' transformer config; our sections ride along under `_rollforge`
                            (diffusers drops `_`-keys), so `rollforge import --from diffusers` restores them
    OUT/config.yaml, OUT/README.md            as above
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file
from torch import Tensor

from infra.config import RESOLVED_NAME, load_config, to_dict
from pipeline.networks.checkpoints import check_state_dict, read_state_dict
from pipeline.networks.layouts import diffusers_config, wan_to_diffusers
from pipeline.networks.wan_dit import build_dit

GENERATOR_SECTIONS = ("model", "video", "codec", "text", "stream", "sampler")
EXPORT_DTYPES = ("float32", "float16", "bfloat16")  # loading casts to the run's dtype (strict load_state_dict)
DS_TAG = "ds"
EXPORT_FORMATS = ("wan", "diffusers")
WEIGHT_NAMES = {"wan": "model.safetensors", "diffusers": "diffusion_pytorch_model.safetensors"}


class ExportError(RuntimeError):
    """The checkpoint cannot be exported (missing, incomplete, mismatched or non-finite)."""


def find_checkpoint(run_dir: Path, step: int | None = None) -> Path:
    """The checkpoint dir named by `checkpoints/latest`, or `checkpoints/step_{step:06d}`."""
    ckpts = run_dir / "checkpoints"
    if step is not None:
        path = ckpts / f"step_{step:06d}"
        if not path.is_dir():
            have = sorted(p.name for p in ckpts.glob("step_*")) if ckpts.is_dir() else []
            raise ExportError(f"{path}: no checkpoint for step {step}; available: {', '.join(have) or 'none'}")
        return path
    latest = ckpts / "latest"
    if not latest.is_file():
        raise ExportError(f"{latest}: not found - {run_dir} holds no complete checkpoint "
                          f"(is it a training run dir? did the run save one yet?)")
    name = latest.read_text().strip()
    path = ckpts / name
    if not name or not path.is_dir():
        raise ExportError(f"{latest} names {name!r}, but {path} does not exist")
    return path


def _strip_module(state: dict[str, Tensor]) -> dict[str, Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def read_generator_weights(ckpt: Path, meta: dict) -> dict[str, Tensor]:
    """Consolidated fp32 generator weights from a DeepSpeed checkpoint (any ZeRO stage, any world size)."""
    ds_dir = ckpt / "generator"
    if not (ds_dir / DS_TAG).is_dir():
        raise ExportError(f"{ds_dir / DS_TAG}: no DeepSpeed checkpoint (expected engine.save_checkpoint(tag='ds'))")
    zero_stage = meta.get("zero_stage")
    if zero_stage is None:
        zero_stage = 1 if any((ds_dir / DS_TAG).glob("*_optim_states.pt")) else 0
    if zero_stage == 0:
        # ZeRO-0: the module's own weights are the full model (weights_only: never run pickled code).
        files = sorted((ds_dir / DS_TAG).glob("mp_rank_*_model_states.pt"))
        if not files:
            raise ExportError(f"{ds_dir / DS_TAG}: no *_model_states.pt file")
        try:
            state = torch.load(files[0], map_location="cpu", weights_only=True)["module"]
        except Exception as e:
            raise ExportError(f"{files[0]}: cannot read the module weights: {e}") from None
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            with contextlib.redirect_stdout(sys.stderr):  # keep stdout clean for the CLI's JSON
                state = get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag=DS_TAG)
        except (FileNotFoundError, ValueError) as e:
            raise ExportError(f"{ds_dir / DS_TAG}: cannot consolidate the ZeRO-{zero_stage} shards: {e}") from None
    return _strip_module(dict(state))


def _fp32(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # clone: ZeRO consolidation returns views into flat buffers, which safetensors refuses to save
    return {k: v.detach().to("cpu", torch.float32).clone().contiguous() for k, v in state.items()}


def check_finite(state: dict[str, Tensor], source: str) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ExportError(f"{source}: non-finite (NaN/inf) values in {len(bad)} tensor(s): "
                          f"{', '.join(bad[:5])}{more}; refusing to export a diverged model "
                          f"(pick an earlier checkpoint with --step)")


def _model_card(cfg, meta: dict, ema: bool, n_params: int, run_dir: Path, ckpt: Path, out: Path,
                dtype: str = "float32", fmt: str = "wan") -> str:
    m = cfg.model
    stage, step = meta.get("stage", cfg.train.stage), meta.get("step")
    return f"""# rollforge {stage} checkpoint (step {step})

A Wan2.1-layout DiT ({n_params:,} parameters; dim {m.dim}, {m.num_layers} layers, {m.num_heads} heads)
{"student distilled for real-time streaming (Rolling Forcing)" if stage == "distill" else
 f"trained with the `{stage}` stage"} by rollforge.

- weights: `{WEIGHT_NAMES[fmt]}` ({dtype}, {"EMA" if ema else "raw"} weights), {
    "Wan key layout" if fmt == "wan" else "diffusers WanTransformer3DModel layout (`rollforge import --from diffusers` "
    "turns it back into a Wan-layout export for `rollforge generate`)"}
- stage: `{stage}`, step: {step}, checkpoint: `{ckpt.name}` of `{run_dir}`
- video: {cfg.video.width}x{cfg.video.height} @ {cfg.video.fps} fps, codec `{cfg.codec.kind}`, text `{cfg.text.kind}`
- streaming: {cfg.stream.frames_per_block} latent frames per block, steps {list(cfg.stream.denoising_steps)},
  sampler `{cfg.sampler.kind}`

## Run

```
rollforge generate --config {out}/config.yaml --checkpoint {out} --prompt "a red ball bouncing" --out video.mp4
```

`config.json` holds the exact model/video/codec/text/stream/sampler settings; the generator refuses
a `--config` whose model section differs.
"""


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished temp dir to `out`, replacing an earlier export there (never other data)."""
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif out.is_dir() and (out / "config.json").is_file() and any((out / n).is_file() for n in WEIGHT_NAMES.values()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            old.rmdir()
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
            return
        else:
            raise ExportError(f"{out}: exists and is not an earlier export; choose another --out")
    tmp.rename(out)


def check_format(fmt: str, model: dict) -> None:
    """Refuse a format that cannot hold this model faithfully (diffusers fixes flow prediction and RoPE 10000)."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"format {fmt!r}: valid: {', '.join(EXPORT_FORMATS)}")
    if fmt == "diffusers":
        if model.get("prediction", "flow") != "flow":
            raise ExportError(f"model.prediction={model['prediction']}: diffusers' WanTransformer3DModel is read as "
                              f"a flow predictor, so this model would be silently wrong there; use --format wan")
        if float(model.get("rope_theta", 10000.0)) != 10000.0:
            raise ExportError(f"model.rope_theta={model['rope_theta']}: diffusers' Wan RoPE is fixed at 10000; "
                              f"use --format wan")


def write_export(out: Path, state: dict[str, Tensor], info: dict, sections: dict, card: str,
                 fmt: str = "wan", metadata: dict[str, str] | None = None) -> Path:
    """Write an export directory atomically (temp dir, then rename) in `fmt`: Wan-native `model.safetensors`
    + our config.json, or a diffusers folder (see the module docstring). `state` is in Wan's key layout."""
    check_format(fmt, sections["model"])
    if fmt == "diffusers":
        state = wan_to_diffusers(state, source=str(out))
        config = {**diffusers_config(sections["model"]), "_rollforge": info}
    else:
        config = info
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(state, str(tmp / WEIGHT_NAMES[fmt]), metadata={"format": "pt", **(metadata or {})})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "config.yaml").write_text(yaml.safe_dump(sections, sort_keys=False))
        (tmp / "README.md").write_text(card)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_checkpoint(run_dir: str | Path, out_dir: str | Path, ema: bool = False, step: int | None = None,
                      *, config_type: type, dtype: str = "float32", format: str = "wan") -> Path:
    """Export one checkpoint of a training run to `out_dir`; returns `out_dir`. Weights are checked
    in fp32 and stored as `dtype` (a shipped model's size: float16 halves it, as Wan ships bf16).

    `config_type` is the root config dataclass the run's config.resolved.yaml is read into (the
    orchestration layer passes infra.schema.Config; training does not import it).
    """
    run_dir, out = Path(run_dir).resolve(), Path(out_dir).resolve()
    if dtype not in EXPORT_DTYPES:
        raise ExportError(f"dtype {dtype!r}: valid: {', '.join(EXPORT_DTYPES)}")
    if format not in EXPORT_FORMATS:
        raise ExportError(f"format {format!r}: valid: {', '.join(EXPORT_FORMATS)}")
    if not (run_dir / RESOLVED_NAME).is_file():
        raise ExportError(f"{run_dir / RESOLVED_NAME}: not found - is {run_dir} a training run dir?")
    cfg = load_config(config_type, run_dir / RESOLVED_NAME)
    ckpt = find_checkpoint(run_dir, step)
    meta_file = ckpt / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if ema:
        src = ckpt / "ema.safetensors"
        if not src.is_file():
            raise ExportError(f"{src}: no EMA weights in this checkpoint (export without --ema)")
        state = read_state_dict(src)
    else:
        src = ckpt / "generator"
        state = read_generator_weights(ckpt, meta)
    state = _fp32(state)
    model = build_dit(cfg.model, device="meta")
    try:
        check_state_dict(model, state, source=str(src))
    except ValueError as e:
        raise ExportError(str(e)) from None
    check_finite(state, str(src))
    state = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in state.items()}
    check_finite(state, f"{src} as {dtype}")

    stage, step_no = meta.get("stage", cfg.train.stage), meta.get("step")
    sections = {name: to_dict(getattr(cfg, name)) for name in GENERATOR_SECTIONS}
    sections["model"]["weights"] = None  # the weights are this directory's model.safetensors
    info = {**sections, "stage": stage, "step": step_no, "ema": ema, "checkpoint": ckpt.name,
            "source_run": str(run_dir), "dtype": dtype}
    n_params = sum(v.numel() for v in state.values())
    card = _model_card(cfg, meta, ema, n_params, run_dir, ckpt, out, dtype, format)
    return write_export(out, state, info, sections, card, format,
                        metadata={"stage": str(stage), "step": str(step_no), "ema": str(ema).lower()})
