"""`rollforge import`: a reference checkpoint -> a rollforge export directory (what `generate` loads).

    import_checkpoint(source, input_path, out_dir, cfg=cfg, ema=False, num_heads=None, dtype="float32")

Sources (layouts documented in `pipeline.networks.layouts`):

    rolling-forcing   TencentARC/RollingForcing `rolling_forcing_dmd.pt`
    self-forcing      guandeh17/Self-Forcing `ode_init.pt`, `self_forcing_dmd.pt`
                      both: torch.save({"generator": ..., "critic": ..., "generator_ema": ...}), keys
                      `model.<wan key>` (+ FSDP wrapper segments); `generator` by default, `generator_ema`
                      with `ema=True` (their inference.py `--use_ema`), a bare `model` dict as their
                      trainers also accept; read with torch.load(weights_only=True) only
    diffusers         a WanTransformer3DModel folder (config.json + diffusion_pytorch_model.safetensors,
                      or sharded with its .index.json), or a pipeline root holding `transformer/`

The output is the same directory `rollforge export` writes (model.safetensors in Wan's key layout,
config.json, config.yaml, README.md). Its model section holds the shape read from the weights
(dim, ffn_dim, num_layers, in_dim, out_dim, patch_size, text_dim, freq_dim, qk_norm, cross_attn_norm);
the other generator sections (video, codec, text, stream, sampler) and the model fields the tensors do
not fix (text_len, rope_theta, prediction, eps unless diffusers states it) come from `cfg`. num_heads is
not in the tensors either: `num_heads`, else diffusers' config, else `cfg.model.num_heads` when cfg's dim
equals the weights', else Wan's head dim 128 (1.3B: 1536 / 12 heads, 14B: 5120 / 40 heads).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from infra.config import from_dict, to_dict
from pipeline.config import ConfigError
from pipeline.networks.checkpoints import check_state_dict
from pipeline.networks.layouts import (
    WAN_HEAD_DIM,
    diffusers_to_wan,
    infer_wan_shape,
    model_fields_from_diffusers,
    strip_reference_wrappers,
)
from pipeline.networks.wan_dit import build_dit

from .export import EXPORT_DTYPES, GENERATOR_SECTIONS, ExportError, _fp32, check_finite, write_export

SOURCES = ("rolling-forcing", "self-forcing", "diffusers")
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
EMBEDDED = "_rollforge"  # our sections inside a diffusers config.json written by `export --format diffusers`


class CheckpointImportError(ValueError):
    """The input is not a checkpoint of the named source (or does not fit the config)."""


# ----------------------------------------------------------------------------- readers
def _torch_load(path: Path) -> object:
    """torch.load with weights_only=True (tensors and plain containers only: never run pickled code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files cannot be mmapped; retry plainly
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every unreadable file gets the same clear refusal
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CheckpointImportError(
            f"{path}: not a weights-only torch checkpoint (torch.load(weights_only=True) refused it: {cause}); "
            f"rollforge never unpickles arbitrary objects") from None


def _describe(obj: object) -> str:
    if isinstance(obj, dict):
        keys = list(obj)
        return f"a dict with keys {', '.join(map(repr, keys[:6]))}{' ...' if len(keys) > 6 else ''}" if keys else "an empty dict"
    return f"a {type(obj).__name__}"


def _tensor_dict(obj: object, where: str) -> dict[str, Tensor]:
    if not isinstance(obj, dict) or not obj:
        raise CheckpointImportError(f"{where}: expected a state dict (name -> tensor), found {_describe(obj)}")
    bad = [(k, type(v).__name__) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointImportError(f"{where}: expected a state dict (name -> tensor), but {len(bad)} entr(y/ies) "
                                    f"are not tensors, e.g. {bad[0][0]!r}: {bad[0][1]}")
    return dict(obj)


def read_reference_pt(path: str | Path, ema: bool = False) -> tuple[dict[str, Tensor], str | None]:
    """(Wan-layout state dict, the top-level key used) of a Rolling Forcing / Self-Forcing .pt file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointImportError(f"{path}: expected a dict holding 'generator' (and 'critic', 'generator_ema'), "
                                    f"found {_describe(obj)}")
    if ema:
        if "generator_ema" not in obj:
            raise CheckpointImportError(f"{path}: --ema: no 'generator_ema' in this checkpoint ({_describe(obj)}); "
                                        f"it was saved without EMA weights - import without --ema")
        key = "generator_ema"
    elif "generator" in obj:
        key = "generator"
    elif isinstance(obj.get("model"), dict):
        key = "model"  # their trainers' `generator_ckpt` loader accepts {"model": ...} too
    elif obj and all(isinstance(v, Tensor) for v in obj.values()):
        key = None  # a bare state dict (e.g. `generator.state_dict()` saved on its own)
    else:
        raise CheckpointImportError(f"{path}: no 'generator' state dict ({_describe(obj)})")
    where = f"{path} [{key!r}]" if key else str(path)
    state = _tensor_dict(obj if key is None else obj[key], where)
    try:
        return strip_reference_wrappers(state, source=where), key
    except ValueError as e:
        raise CheckpointImportError(str(e)) from None


def read_diffusers(path: str | Path) -> tuple[dict[str, Tensor], dict, Path]:
    """(Wan-layout state dict, diffusers config dict, transformer folder) of a WanTransformer3DModel folder."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory (a diffusers WanTransformer3DModel folder: config.json + "
                                f"{DIFFUSERS_WEIGHTS})")
    if (root / "transformer" / "config.json").is_file():
        root = root / "transformer"  # a pipeline root (Wan2.1-T2V-*-Diffusers)
    cfg_file = root / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: not found; expected a diffusers WanTransformer3DModel folder")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointImportError(f"{cfg_file}: not JSON ({e})") from None
    if (root / DIFFUSERS_INDEX).is_file():
        index = json.loads((root / DIFFUSERS_INDEX).read_text())
        state: dict[str, Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(str(root / shard)))
    elif (root / DIFFUSERS_WEIGHTS).is_file():
        state = load_file(str(root / DIFFUSERS_WEIGHTS))
    else:
        raise FileNotFoundError(f"{root}: no {DIFFUSERS_WEIGHTS} or {DIFFUSERS_INDEX}")
    try:
        return diffusers_to_wan(state, source=str(root)), config, root
    except ValueError as e:
        raise CheckpointImportError(str(e)) from None


# ----------------------------------------------------------------------------- the model section
def _num_heads(dim: int, num_heads: int | None, stated: int | None, cfg_model, where: str) -> int:
    if num_heads is not None:
        if stated is not None and stated != num_heads:
            raise CheckpointImportError(f"--num-heads {num_heads}: {where} states {stated} heads")
        return num_heads
    if stated is not None:
        return stated
    if cfg_model.dim == dim:
        return cfg_model.num_heads  # the config describes this very model
    if dim % WAN_HEAD_DIM == 0:
        return dim // WAN_HEAD_DIM
    raise CheckpointImportError(f"{where}: dim {dim} is not a multiple of Wan's head dim {WAN_HEAD_DIM}, and the "
                                f"head count is not in the weights: pass --num-heads")


def model_section(cfg_model, state: dict[str, Tensor], where: str, num_heads: int | None = None,
                  stated: dict | None = None):
    """cfg_model with the fields the weights (and a diffusers config) fix replaced; weights=None."""
    shape = infer_wan_shape(state, source=where)
    stated = stated or {}
    clash = [f"{k}: config.json says {stated[k]}, weights say {v}" for k, v in shape.items()
             if k in stated and stated[k] != v]
    if clash:
        raise CheckpointImportError(f"{where}: config.json does not match the weights ({'; '.join(clash[:3])})")
    heads = _num_heads(shape["dim"], num_heads, stated.get("num_heads"), cfg_model, where)
    extra = {"eps": stated["eps"]} if "eps" in stated else {}
    model = dataclasses.replace(cfg_model, **{**shape, "patch_size": tuple(shape["patch_size"])}, **extra,
                                num_heads=heads, weights=None)
    model.validate()
    return model


def _card(source: str, input_path: Path, key: str | None, cfg, n_params: int, dtype: str, out: Path) -> str:
    m = cfg.model
    return f"""# rollforge import of a {source} checkpoint

A Wan2.1-layout DiT ({n_params:,} parameters; dim {m.dim}, {m.num_layers} layers, {m.num_heads} heads)
imported by `rollforge import --from {source}` from `{input_path}`{f" (key `{key}`)" if key else ""}.

- weights: `model.safetensors` ({dtype}), Wan key layout
- shape: read from the weights; num_heads, text_len, rope_theta, prediction and the video/codec/text/
  stream/sampler sections come from the config given to `rollforge import` (see config.json)

```
rollforge generate --config {out}/config.yaml --checkpoint {out} --prompt "a red ball bouncing" --out video.mp4
```
"""


# ----------------------------------------------------------------------------- import
def import_checkpoint(source: str, input_path: str | Path, out_dir: str | Path, *, cfg, ema: bool = False,
                      num_heads: int | None = None, dtype: str = "float32", use_embedded: bool = True) -> Path:
    """Import `input_path` (a `source` checkpoint) into the export directory `out_dir`; returns it.

    `cfg` is a root (or generator) config whose sections surround the imported model. With
    `use_embedded`, a diffusers folder written by `rollforge export --format diffusers` supplies its
    own `_rollforge` sections instead (an exact round trip).
    """
    if source not in SOURCES:
        raise CheckpointImportError(f"--from {source!r}: valid: {', '.join(SOURCES)}")
    if dtype not in EXPORT_DTYPES:
        raise CheckpointImportError(f"dtype {dtype!r}: valid: {', '.join(EXPORT_DTYPES)}")
    input_path, out = Path(input_path).resolve(), Path(out_dir).resolve()
    stated, embedded, key = None, None, None
    if source == "diffusers":
        if ema:
            raise CheckpointImportError("--ema: a diffusers folder holds one set of weights; drop --ema")
        state, dcfg, folder = read_diffusers(input_path)
        where = str(folder)
        stated = model_fields_from_diffusers(dcfg, source=str(folder / "config.json"))
        embedded = dcfg.get(EMBEDDED) if use_embedded else None
    else:
        state, key = read_reference_pt(input_path, ema)
        where = f"{input_path} [{key!r}]" if key else str(input_path)
    if embedded:
        data = to_dict(cfg)
        data.update({k: embedded[k] for k in GENERATOR_SECTIONS if k in embedded})
        cfg = from_dict(type(cfg), data)
    else:
        cfg = from_dict(type(cfg), to_dict(cfg))  # a copy: the caller's config is left as it was
    cfg.model = model_section(cfg.model, state, where, num_heads, stated)
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{e} (the weights fix model.{{dim, in_dim, out_dim, text_dim, ...}}; give --config with "
                          f"video/codec/text/stream sections that fit them, e.g. configs/wan2.1_t2v_1.3b.yaml)") from None

    state = _fp32(state)
    try:
        check_state_dict(build_dit(cfg.model, device="meta"), state, source=where)
        check_finite(state, where)
    except (ValueError, ExportError) as e:
        raise CheckpointImportError(str(e)) from None
    state = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in state.items()}

    sections = {name: to_dict(getattr(cfg, name)) for name in GENERATOR_SECTIONS}
    info = {**sections, "stage": (embedded or {}).get("stage", "import"), "step": (embedded or {}).get("step"),
            "ema": (embedded or {}).get("ema", ema), "checkpoint": input_path.name, "source_run": None,
            "dtype": dtype, "imported_from": {"format": source, "path": str(input_path), "key": key}}
    n_params = sum(v.numel() for v in state.values())
    try:
        return write_export(out, state, info, sections, _card(source, input_path, key, cfg, n_params, dtype, out),
                            metadata={"stage": str(info["stage"]), "source": source, "ema": str(ema).lower()})
    except ExportError as e:
        raise CheckpointImportError(str(e)) from None
