"""Prompt-only training data: `data.prompts` feeds ode_init and distill with no videos at all.

The reference distils from a text file of prompts (TencentARC/RollingForcing `configs/
rolling_forcing_dmd.yaml`: `data_path: prompts/vidprom_filtered_extended.txt`, a `TextDataset`).
Here the prompts are embedded once by the frozen text encoder (`data.prompts.embed_prompts`) and
served like latent shards: sharded by rank, reshuffled each epoch, resumed exactly.

`data.prompts` is either a prompt file (.txt / .jsonl / .csv), embedded on first use into
`<cache_dir>/<file stem>` (a training run's `RUN/prompts`), or a directory `rollforge data prompts`
already wrote (used as is, after checking its encoder matches `text.*`).

Order: epoch e serves `PromptDataset.order(e, seed)` (a permutation of all N prompts), rank r of W
takes positions r, r + W, r + 2W, ... of it, in batches of `batch_size` (the last one of an epoch
may be short; batches never span epochs). Position = (epoch, prompts served this epoch).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from pipeline.config import ConfigError

from .prompts import MANIFEST_FILE, PromptDataset, embed_prompts, prompts_sha256, read_prompts


def prompt_dir(source: str | Path, cache_dir: str | Path | None) -> Path:
    """Where the embedded prompt set of `source` lives (nothing is computed)."""
    source = Path(source)
    if source.is_dir():
        return source
    if cache_dir is None:
        raise ConfigError(f"data.prompts: {source} is a prompt file; embed it first "
                          "(`rollforge data prompts --input FILE --out DIR`) or train through `rollforge train/run`")
    return Path(cache_dir) / source.stem


def check_encoder(directory: Path, text_cfg) -> None:
    """An embedded set must come from the encoder `text.*` names (kind and token count)."""
    ds = PromptDataset(directory)
    enc = ds.manifest.get("encoder", {})
    if enc.get("kind") != text_cfg.kind or int(enc.get("max_length", -1)) != text_cfg.max_length:
        raise ConfigError(f"data.prompts: {directory} was embedded with {enc.get('kind')} "
                          f"(max_length {enc.get('max_length')}), but text.kind={text_cfg.kind}, "
                          f"text.max_length={text_cfg.max_length}; embed it again with this config")


def embed_prompt_source(source: str | Path, text_cfg, cache_dir: str | Path | None, device="cpu") -> Path:
    """The embedded set for `source`, embedding a prompt file into `cache_dir` once (idempotent)."""
    out = prompt_dir(source, cache_dir)
    if Path(source).is_dir():
        if not (out / MANIFEST_FILE).is_file():
            raise ConfigError(f"data.prompts: {out} is a directory without {MANIFEST_FILE}; give a prompt file "
                              "(.txt, .jsonl, .csv) or a `rollforge data prompts` output")
        check_encoder(out, text_cfg)
        return out
    prompts, counts = read_prompts(source)
    if not prompts:
        raise ConfigError(f"data.prompts: {source} holds no prompts ({counts})")
    if _current(out, prompts, text_cfg):
        return out
    from pipeline.networks.text_encoders import build_text_encoder

    embed_prompts(prompts, build_text_encoder(text_cfg, device), out)
    return out


def _current(directory: Path, prompts: list[str], text_cfg) -> bool:
    try:
        ds = PromptDataset(directory)
        check_encoder(directory, text_cfg)
    except (FileNotFoundError, ValueError):
        return False
    return ds.manifest.get("prompts_sha256") == prompts_sha256(prompts)


class PromptLoader:
    """Infinite, deterministic, resumable batches of prompt embeddings for one rank.

    Yields {"text": [B, L, D] float32, "text_len": int64 [B], "caption": list[str]}: the keys the
    objectives read from latent batches (`data.loader.latent_decoder`), without "latent".
    """

    def __init__(self, directory: str | Path, rank: int, world_size: int, seed: int, batch_size: int = 1):
        self.dataset = PromptDataset(directory, seed=seed)
        n = len(self.dataset)
        if not 0 <= rank < world_size:
            raise ValueError(f"PromptLoader: rank {rank} outside world size {world_size}")
        if n < world_size:
            raise ValueError(f"data.prompts: {n} prompts cannot feed {world_size} ranks")
        if batch_size < 1:
            raise ValueError(f"PromptLoader: batch_size must be >= 1, got {batch_size}")
        self.rank, self.world_size, self.seed, self.batch_size = rank, world_size, seed, batch_size
        self.epoch, self.served = 0, 0

    def _mine(self, epoch: int) -> list[int]:
        return self.dataset.order(epoch, self.seed)[self.rank::self.world_size]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "samples": self.served, "rank": self.rank, "world_size": self.world_size,
                "seed": self.seed, "prompts_sha256": self.dataset.manifest.get("prompts_sha256")}

    def load_state_dict(self, state: Mapping) -> None:
        for key, mine in (("world_size", self.world_size), ("rank", self.rank), ("seed", self.seed),
                          ("prompts_sha256", self.dataset.manifest.get("prompts_sha256"))):
            if key in state and state[key] != mine:
                raise ValueError(f"PromptLoader.load_state_dict: saved {key}={state[key]} but this loader has "
                                 f"{mine}; the prompt order would differ")
        self.epoch, self.served = int(state["epoch"]), int(state["samples"])

    def __iter__(self) -> Iterator[dict]:
        while True:
            mine = self._mine(self.epoch)
            while self.served < len(mine):
                idx = mine[self.served:self.served + self.batch_size]
                self.served += len(idx)
                rows = [self.dataset[i] for i in idx]
                yield {"text": torch.stack([emb.float() for _, emb in rows]),
                       "text_len": self.dataset.lengths[idx].clone(), "caption": [p for p, _ in rows]}
            self.epoch, self.served = self.epoch + 1, 0
