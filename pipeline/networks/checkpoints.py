"""Safe weight files for the DiT: safetensors (file, directory, or sharded index) or weights-only .pth.

Accepts Wan2.1's own release layout (`diffusion_pytorch_model.safetensors`, possibly sharded with a
`*.safetensors.index.json`) and our exports (`model.safetensors`). Never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..config import ConfigError

WEIGHT_FILES = ("model.safetensors", "diffusion_pytorch_model.safetensors")
INDEX_FILES = ("model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.json")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load a state dict from a .safetensors/.pth file or a directory holding one (or a shard index)."""
    path = Path(path)
    if path.is_dir():
        for name in INDEX_FILES:
            if (path / name).is_file():
                index = json.loads((path / name).read_text())
                state: dict[str, Tensor] = {}
                for shard in sorted(set(index["weight_map"].values())):
                    state.update(load_file(str(path / shard)))
                return state
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return load_file(str(path / name))
        raise FileNotFoundError(f"{path}: no {' / '.join(WEIGHT_FILES + INDEX_FILES)} in this directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix in (".pth", ".pt", ".bin"):
        # weights_only: a checkpoint is data; never let it run pickled code.
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
        return state
    raise ValueError(f"{path}: unknown weights format {path.suffix!r} (use .safetensors or .pth)")


def check_state_dict(model: nn.Module, state: dict[str, Tensor], source: str = "checkpoint", show: int = 5) -> None:
    """Raise ValueError naming (the first `show`) missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in sorted(set(state) & set(own)) if tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", shapes)):
        if items:
            more = f", ... (+{len(items) - show} more)" if len(items) > show else ""
            problems.append(f"{len(items)} {label} key(s): {', '.join(items[:show])}{more}")
    if problems:
        raise ValueError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))


def load_weights(model: nn.Module, path: str | Path, assign: bool = False) -> None:
    """Strictly load `path` into `model`; mismatches are reported by name and shape. `assign`: the
    model's parameters become the file's tensors (a meta-device model; no second copy is made)."""
    state = read_state_dict(path)
    check_state_dict(model, state, source=f"weights {path}")
    model.load_state_dict(state, strict=True, assign=assign)


def save_weights(model: nn.Module, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path))
    return path


def check_export_model(path: str | Path, model_cfg, prefix: str = "model") -> None:
    """An export dir (model.safetensors + config.json) must have been trained with `model_cfg`'s
    settings: raise ConfigError naming the first differing `<prefix>.<key>` (`weights` aside).

    Shapes are also caught by the strict load, but not `prediction`: an x0-predicting export read
    as a flow predictor loads fine and is silently wrong. Anything without a config.json (a bare
    .safetensors, Wan's own weights) is not checked.
    """
    meta = Path(path) / "config.json"
    if not meta.is_file():
        return
    saved = json.loads(meta.read_text()).get("model", {})
    mine = json.loads(json.dumps(asdict(model_cfg)))  # tuples -> lists, as saved
    diff = [k for k, v in saved.items() if k in mine and k != "weights" and v != mine[k]]
    if diff:
        raise ConfigError(f"{prefix}.{diff[0]}: checkpoint {path} was trained with {diff[0]}={saved[diff[0]]}, "
                          f"config says {mine[diff[0]]}")
