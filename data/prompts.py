"""Prompt-only datasets: DMD distillation needs text conditions, not videos.

`read_prompts` reads a `.txt` (one prompt per line), `.jsonl` or `.csv` file; `embed_prompts` runs a frozen
text encoder once and stores the token-level context next to the prompt texts; `PromptDataset`
serves `(prompt, embedding [L, D])` pairs back with a deterministic shuffled order per epoch.

On-disk layout of an embedded prompt set (one directory):

    prompts.safetensors   embeddings [N, L, D] float32 | bfloat16 (zero past each prompt's length),
                          lengths [N] int64; metadata: prompts_sha256, count
    prompts.jsonl         {"index": i, "prompt": text} per line, in embedding order
    manifest.json         encoder identity (kind, path, hidden_dim, max_length), dtype, count,
                          prompts_sha256 (sha256 of the JSON list of prompts)

The manifest is written last and removed first on a rewrite, so a directory whose manifest agrees
with the safetensors metadata is complete.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pipeline.networks.text_encoders import MiniLMEncoder, TextEncoder, UMT5Encoder

EMBEDDINGS_FILE = "prompts.safetensors"
TEXTS_FILE = "prompts.jsonl"
MANIFEST_FILE = "manifest.json"
TEXT_FIELDS = ("prompt", "caption", "text")  # JSONL fields tried in this order
FORMAT_VERSION = 1
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16"}


def _dtype_name(dtype: str | torch.dtype) -> str:
    if isinstance(dtype, str):
        name = _DTYPE_ALIASES.get(dtype, dtype)
    else:
        name = next((k for k, v in _DTYPES.items() if v == dtype), None)
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)} (or bf16 / fp32), got {dtype!r}")
    return name


def read_prompts(path: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """Prompts from `.txt` (one per non-empty line, lines starting with `#` ignored), `.jsonl`
    (the first non-empty string among the fields `prompt`, `caption`, `text` of each object) or
    `.csv` (with a header: the first of those columns present, else the first column).

    Returns (prompts, counts) with counts = {"prompts", "blank", "comments", "bad"}; `bad` counts
    JSONL lines that are not valid JSON, not an object, or hold no usable text field (skipped).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".csv"):
        raise ValueError(f"{path}: prompt files are .txt (one per line), .jsonl or .csv, got {suffix or 'no suffix'!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such prompt file")
    counts = {"prompts": 0, "blank": 0, "comments": 0, "bad": 0}
    if suffix == ".csv":
        return _read_csv(path, counts)
    prompts: list[str] = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line:
                counts["blank"] += 1
                continue
            if suffix == ".txt":
                if line.startswith("#"):
                    counts["comments"] += 1
                else:
                    prompts.append(line)
                continue
            text = _jsonl_text(line)
            if text is None:
                counts["bad"] += 1
            else:
                prompts.append(text)
    counts["prompts"] = len(prompts)
    return prompts, counts


def _read_csv(path: Path, counts: dict[str, int]) -> tuple[list[str], dict[str, int]]:
    prompts: list[str] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if not fields:
            raise ValueError(f"{path}: an empty CSV (a header row naming a prompt column is required)")
        column = next((c for c in TEXT_FIELDS if c in fields), fields[0])
        for row in reader:
            text = (row.get(column) or "").strip()
            if text:
                prompts.append(text)
            else:
                counts["blank"] += 1
    counts["prompts"] = len(prompts)
    return prompts, counts


def _jsonl_text(line: str) -> str | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    for key in TEXT_FIELDS:
        value = obj.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def prompts_sha256(prompts: list[str]) -> str:
    """sha256 of the JSON-encoded prompt list (order and exact text matter)."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode("utf-8")).hexdigest()


def encoder_identity(encoder: TextEncoder) -> dict:
    """What determines an encoder's output: kind, checkpoint path (umt5), hidden_dim, max_length."""
    if isinstance(encoder, MiniLMEncoder):
        kind, path = "minilm", None
    elif isinstance(encoder, UMT5Encoder):
        kind, path = "umt5", encoder.path
    else:
        kind, path = type(encoder).__name__, getattr(encoder, "path", None)
    return {"kind": kind, "path": path, "hidden_dim": int(encoder.hidden_dim),
            "max_length": int(encoder.max_length)}


def _read_manifest(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MANIFEST_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _stored_sha(directory: Path) -> str | None:
    try:
        with safe_open(str(directory / EMBEDDINGS_FILE), framework="pt") as f:
            return (f.metadata() or {}).get("prompts_sha256")
    except Exception:  # missing or unreadable file: not up to date
        return None


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def embed_prompts(prompts: list[str], encoder: TextEncoder, out_dir: str | os.PathLike, batch_size: int = 32,
                  dtype: str | torch.dtype = torch.float32) -> Path:
    """Encode `prompts` with `encoder` into `out_dir` (layout in the module docstring); returns `out_dir`.

    Idempotent: when `out_dir` already holds these prompts (same sha256) embedded by the same encoder
    identity and dtype, nothing is written. Otherwise every file is written to a temporary name and
    `os.replace`d into place; the manifest goes last. `dtype`: float32 (default) or bfloat16.
    """
    if isinstance(prompts, str):
        raise TypeError("embed_prompts takes a list of prompts, got a single str")
    prompts = list(prompts)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    dtype_name = _dtype_name(dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sha = prompts_sha256(prompts)
    manifest = {"format": FORMAT_VERSION, "encoder": encoder_identity(encoder), "dtype": dtype_name,
                "count": len(prompts), "prompts_sha256": sha}
    if _read_manifest(out) == manifest and _stored_sha(out) == sha and (out / TEXTS_FILE).is_file():
        return out

    L, D = encoder.max_length, encoder.hidden_dim
    embeddings = torch.zeros(len(prompts), L, D, dtype=_DTYPES[dtype_name])
    lengths = torch.zeros(len(prompts), dtype=torch.int64)
    for start in range(0, len(prompts), batch_size):
        states = encoder.encode(prompts[start:start + batch_size]).float().cpu()  # [b, L, D]
        if tuple(states.shape[1:]) != (L, D):
            raise ValueError(f"encoder returned {tuple(states.shape)}, expected [b, {L}, {D}]")
        nonzero = states.abs().amax(dim=-1) > 0  # [b, L]; rows past the prompt's length are exactly 0
        positions = torch.arange(1, L + 1).expand_as(nonzero)
        lengths[start:start + len(states)] = (positions * nonzero).amax(dim=-1)
        embeddings[start:start + len(states)] = states.to(embeddings.dtype)

    (out / MANIFEST_FILE).unlink(missing_ok=True)  # an interrupted rewrite must not look complete
    _atomic_write(out / EMBEDDINGS_FILE, lambda p: save_file(
        {"embeddings": embeddings, "lengths": lengths}, p, metadata={"prompts_sha256": sha, "count": str(len(prompts))}))
    texts = "".join(json.dumps({"index": i, "prompt": p}, ensure_ascii=False) + "\n" for i, p in enumerate(prompts))
    _atomic_write(out / TEXTS_FILE, lambda p: Path(p).write_text(texts, encoding="utf-8"))
    _atomic_write(out / MANIFEST_FILE, lambda p: Path(p).write_text(json.dumps(manifest, indent=2) + "\n"))
    return out


class PromptDataset:
    """Map-style dataset over an `embed_prompts` directory: `ds[i] -> (prompt, embedding [L, D])`.

    Embeddings are read lazily from the safetensors file (one row per access); the dataset pickles
    without its file handle, so it can go to DataLoader workers. `lengths[i]` is prompt i's token count.
    """

    def __init__(self, directory: str | os.PathLike, seed: int = 0):
        self.directory = Path(directory)
        self.seed = seed
        self.manifest = _read_manifest(self.directory)
        if self.manifest is None:
            raise FileNotFoundError(f"{self.directory}: no {MANIFEST_FILE}; run embed_prompts first")
        with open(self.directory / TEXTS_FILE, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        self.prompts = [r["prompt"] for r in sorted(rows, key=lambda r: r["index"])]
        self._file = None
        with safe_open(str(self.directory / EMBEDDINGS_FILE), framework="pt") as f:
            meta = f.metadata() or {}
            self.lengths = f.get_tensor("lengths")
            shape = f.get_slice("embeddings").get_shape()
        sha = self.manifest.get("prompts_sha256")
        if meta.get("prompts_sha256") != sha or prompts_sha256(self.prompts) != sha or shape[0] != len(self.prompts):
            raise ValueError(f"{self.directory}: {EMBEDDINGS_FILE}, {TEXTS_FILE} and {MANIFEST_FILE} disagree "
                             f"(an interrupted rewrite?); run embed_prompts again")
        self.max_length, self.hidden_dim = int(shape[1]), int(shape[2])

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor]:
        n = len(self.prompts)
        if not -n <= index < n:
            raise IndexError(f"prompt index {index} out of range for {n} prompts")
        index %= n
        if self._file is None:
            self._file = safe_open(str(self.directory / EMBEDDINGS_FILE), framework="pt")
        return self.prompts[index], self._file.get_slice("embeddings")[index:index + 1][0]

    def order(self, epoch: int, seed: int | None = None) -> list[int]:
        """A permutation of range(len(self)), a pure function of (seed, epoch) (seed: self.seed if None)."""
        seed = self.seed if seed is None else seed
        rng = np.random.default_rng([int(seed), int(epoch)])
        return [int(i) for i in rng.permutation(len(self.prompts))]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None  # file handles do not pickle; reopened on first access
        return state


__all__ = [
    "EMBEDDINGS_FILE", "MANIFEST_FILE", "TEXTS_FILE", "PromptDataset", "embed_prompts", "encoder_identity",
    "prompts_sha256", "read_prompts",
]
