"""Relative file paths in a config, made absolute before the config leaves the launching process.

Ray Train runs each learner (and Ray each rollout actor) in its own working directory, not the one
`rollforge` was started in, so `model.weights=models/world_teacher` given on the command line would
name nothing there. The driver rewrites every path-valued key against its own working directory
first. A relative value that names nothing here is left alone: a Hugging Face id such as
`text.tokenizer=google/umt5-xxl`, or an output folder a later step creates (whose error, if any,
then names the value the user typed).
"""

from __future__ import annotations

import copy
from pathlib import Path

# (section, field): every key whose value is a file or folder on the launching machine
PATH_KEYS = (
    ("model", "weights"), ("teacher_model", "weights"), ("critic_model", "weights"),
    ("codec", "vae_path"), ("text", "path"), ("text", "tokenizer"),
    ("train", "teacher"), ("train", "init_from"), ("train", "critic_init"),
    ("data", "shards"), ("data", "latents"), ("data", "prompts"),
)


def absolute_paths(cfg, base: Path | None = None):
    """A copy of `cfg` whose relative path values that exist under `base` (default: the working
    directory) are absolute; `cfg` itself is not changed."""
    base = Path.cwd() if base is None else Path(base)
    out = copy.deepcopy(cfg)
    for section, key in PATH_KEYS:
        holder = getattr(out, section, None)
        value = getattr(holder, key, None) if holder is not None else None
        if not value or Path(value).is_absolute():
            continue
        candidate = base / value
        if candidate.exists():
            setattr(holder, key, str(candidate.resolve()))
    return out
