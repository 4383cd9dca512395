"""Resumable training loaders over webdataset tar shards (video shards or latent shards alike).

`ShardLoader` is an infinite iterator of collated batches for one rank. Epoch `e`'s order is a pure
function of (seed, e): the shard list is permuted with a (seed, e)-seeded RNG (identical on every
rank), split by node first (`perm[rank::world]`), then by DataLoader worker (`[worker::num_workers]`);
each worker streams its shards through webdataset's in-buffer shuffle seeded by
(seed, e, rank, worker). The main process merges the workers' streams itself, round-robin one sample
at a time (a worker whose stream ended drops out of the cycle), so the rank's order does not depend
on DataLoader scheduling.

Resume: `state_dict()` records the epoch, the raw samples each worker has handed over this epoch and
whose turn is next. `load_state_dict()` makes the next iteration rebuild the same deterministic
stream and fast-forward each worker past its consumed samples. Cost: skipped samples are re-read
from the tars (and pass through the shuffle buffer) but are never decoded (`decode` runs after the
skip). Resuming needs the same urls, seed, world size and num_workers.

`decode(raw) -> dict | None` turns a raw webdataset sample (`__key__`, `__url__`, one bytes value
per extension) into tensors; returning None drops the sample (it still counts as consumed).

Ray Data path (Ray Train workers): `ray_dataset(urls, decode)`, `iter_ray_shard(shard, batch_size)`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as st_load
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

log = logging.getLogger(__name__)

Decode = Callable[[dict], dict | None]


def mix_seed(*parts: Any) -> int:
    """A 64-bit seed from any reprs (stable across processes, unlike hash())."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


# ------------------------------------------------------------------------------ shard splitting


def epoch_permutation(urls: list[str], epoch: int, seed: int) -> list[str]:
    """The shard order of `epoch`: a (seed, epoch)-seeded permutation, the same on every rank."""
    urls = list(urls)
    random.Random(mix_seed("shards", seed, epoch)).shuffle(urls)
    return urls


def split_by_node(src: Iterable[dict], rank: int, world_size: int, epoch: int, seed: int) -> Iterator[dict]:
    """webdataset nodesplitter: permute the `dict(url=...)` stream for the epoch, keep `[rank::world]`."""
    items = {d["url"]: d for d in src}
    for url in epoch_permutation(list(items), epoch, seed)[rank::world_size]:
        yield items[url]


def split_by_worker(src: Iterable[dict], worker: int, num_workers: int) -> Iterator[dict]:
    """webdataset workersplitter: keep `[worker::num_workers]` of this node's shards."""
    yield from islice(src, worker, None, num_workers)


def shards_for(rank: int, world: int, worker: int, num_workers: int, urls: list[str], epoch: int,
               seed: int) -> list[str]:
    """Shards read by (rank, worker) in `epoch`, in reading order (node split, then worker split)."""
    nodes = split_by_node(({"url": u} for u in urls), rank, world, epoch, seed)
    return [d["url"] for d in split_by_worker(nodes, worker, max(1, num_workers))]


# ------------------------------------------------------------------------------ worker stream

_SAMPLE, _DROPPED, _END = "sample", "dropped", "end"


class _EpochStream(IterableDataset):
    """One epoch of one rank; in a worker, yields (kind, worker, payload) for its shards."""

    def __init__(self, urls, rank, world_size, num_workers, seed, epoch, shuffle_buffer, decode, skip):
        super().__init__()
        self.urls, self.rank, self.world_size = list(urls), rank, world_size
        self.num_workers, self.seed, self.epoch = max(1, num_workers), seed, epoch
        self.shuffle_buffer, self.decode, self.skip = shuffle_buffer, decode, list(skip)

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if (info.num_workers if info is not None else 1) != self.num_workers:
            raise RuntimeError("worker count differs from the loader's num_workers")
        import webdataset as wds  # here: importing the loader (the objectives do) must not need it

        pipe = wds.WebDataset(
            self.urls, shardshuffle=False, empty_check=False,
            nodesplitter=functools.partial(split_by_node, rank=self.rank, world_size=self.world_size,
                                           epoch=self.epoch, seed=self.seed),
            workersplitter=functools.partial(split_by_worker, worker=worker, num_workers=self.num_workers))
        if self.shuffle_buffer > 0:
            rng = random.Random(mix_seed("buffer", self.seed, self.epoch, self.rank, worker))
            pipe = pipe.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
        stream = iter(pipe)
        counts: dict[str, int] = {}  # raw samples per shard url (the loader learns epoch lengths)
        for sample in islice(stream, self.skip[worker]):  # re-read, never decoded
            counts[sample["__url__"]] = counts.get(sample["__url__"], 0) + 1
        for sample in stream:
            counts[sample["__url__"]] = counts.get(sample["__url__"], 0) + 1
            out = self.decode(sample) if self.decode is not None else sample
            yield (_DROPPED, worker, None) if out is None else (_SAMPLE, worker, out)
        for url in shards_for(self.rank, self.world_size, worker, self.num_workers, self.urls, self.epoch,
                              self.seed):
            counts.setdefault(url, 0)
        yield _END, worker, counts


def _collate(samples: list[dict]) -> dict:
    return default_collate(samples)


class ShardLoader:
    """Infinite, deterministic, resumable loader of collated batches for one rank.

    Iterating yields `default_collate`d batches of up to `batch_size` samples (the last batch of an
    epoch may be short; batches never span epochs). Past the end of an epoch the next one starts.
    `shard_sizes` (url -> samples) makes `samples_per_epoch` known before the first full pass.
    """

    def __init__(self, urls: list[str], rank: int, world_size: int, num_workers: int, seed: int,
                 shuffle_buffer: int, decode: Decode | None, batch_size: int = 1,
                 shard_sizes: Mapping[str, int] | None = None):
        urls = [str(u) for u in urls]
        if not urls:
            raise ValueError("ShardLoader: no shard urls")
        if len(set(urls)) != len(urls):
            raise ValueError("ShardLoader: duplicate shard urls")
        if not 0 <= rank < world_size:
            raise ValueError(f"ShardLoader: rank {rank} outside world size {world_size}")
        if len(urls) < world_size:
            raise ValueError(f"ShardLoader: {len(urls)} shards cannot feed {world_size} ranks")
        if batch_size < 1 or num_workers < 0 or shuffle_buffer < 0:
            raise ValueError("ShardLoader: batch_size >= 1, num_workers >= 0, shuffle_buffer >= 0")
        self.urls, self.rank, self.world_size = urls, rank, world_size
        self.num_workers, self.seed, self.shuffle_buffer = num_workers, seed, shuffle_buffer
        self.decode, self.batch_size = decode, batch_size
        self._slots = max(1, num_workers)
        self._sizes: dict[str, int] = dict(shard_sizes or {})  # url -> raw samples (given or measured)
        self._reset(0)

    def _reset(self, epoch: int) -> None:
        self.epoch = epoch
        self._consumed = [0] * self._slots  # raw samples handed over, per worker
        self._next = 0  # whose turn it is

    # ---------------------------------------------------------------------------- state

    @property
    def samples_consumed(self) -> int:
        """Raw samples of this epoch already handed over (dropped ones included)."""
        return sum(self._consumed)

    @property
    def samples_per_epoch(self) -> int | None:
        """Raw samples this rank reads in the current epoch (its shards change with the epoch), from
        `shard_sizes` or from shards counted on earlier full passes; None while any is unknown."""
        mine = epoch_permutation(self.urls, self.epoch, self.seed)[self.rank::self.world_size]
        return sum(self._sizes[u] for u in mine) if all(u in self._sizes for u in mine) else None

    def __len__(self) -> int:
        n = self.samples_per_epoch
        if n is None:
            raise TypeError("ShardLoader: epoch length unknown before a full pass (pass shard_sizes)")
        return -(-n // self.batch_size)

    def state_dict(self) -> dict:
        """JSON-serialisable position: the next sample is exactly the one after the last yielded."""
        return {"epoch": self.epoch, "samples": self.samples_consumed, "worker_samples": list(self._consumed),
                "next_worker": self._next, "num_workers": self.num_workers, "world_size": self.world_size,
                "rank": self.rank, "seed": self.seed, "num_shards": len(self.urls)}

    def load_state_dict(self, state: Mapping) -> None:
        for key, mine in (("num_workers", self.num_workers), ("world_size", self.world_size),
                          ("rank", self.rank), ("seed", self.seed), ("num_shards", len(self.urls))):
            if key in state and state[key] != mine:
                raise ValueError(f"ShardLoader.load_state_dict: saved {key}={state[key]} but this loader has "
                                 f"{mine}; the sample order would differ")
        self._reset(int(state["epoch"]))
        self._consumed = [int(n) for n in state["worker_samples"]]
        self._next = int(state["next_worker"])

    # ---------------------------------------------------------------------------- iteration

    def _worker_streams(self) -> Iterator[tuple[str, int, Any]]:
        ds = _EpochStream(self.urls, self.rank, self.world_size, self.num_workers, self.seed, self.epoch,
                          self.shuffle_buffer, self.decode, self._consumed)
        kw = {"prefetch_factor": 2} if self.num_workers > 0 else {}
        return iter(DataLoader(ds, batch_size=None, num_workers=self.num_workers, **kw))

    def _epoch(self) -> Iterator[dict]:
        """Batches of the rest of the current epoch: a round-robin merge of the workers' streams."""
        stream = self._worker_streams()
        pending = [deque() for _ in range(self._slots)]
        active = [True] * self._slots
        batch: list[dict] = []
        while any(active):
            w = self._next
            while not pending[w]:
                kind, worker, payload = next(stream)
                pending[worker].append((kind, payload))
            kind, payload = pending[w].popleft()
            if kind == _END:
                active[w] = False
                self._sizes.update(payload)
            else:
                self._consumed[w] += 1
                if kind == _SAMPLE:
                    batch.append(payload)
            self._next = self._following(w, active)
            if len(batch) == self.batch_size:
                out, batch = _collate(batch), []
                yield out
        if batch:
            yield _collate(batch)

    def _following(self, w: int, active: list[bool]) -> int:
        for step in range(1, self._slots + 1):
            if active[(w + step) % self._slots]:
                return (w + step) % self._slots
        return 0

    def __iter__(self) -> Iterator[dict]:
        while True:
            fresh, produced = self.samples_consumed == 0, 0
            for batch in self._epoch():
                produced += 1
                yield batch
            if fresh and produced == 0:  # an infinite loop otherwise
                raise RuntimeError(f"ShardLoader: rank {self.rank} got no usable samples in epoch {self.epoch} "
                                   f"({self.samples_per_epoch} read; empty shards, or all dropped by decode)")
            self._reset(self.epoch + 1)


# ------------------------------------------------------------------------------ decoders


def _json(value) -> dict:
    if isinstance(value, dict):
        return value
    return json.loads(value.decode("utf-8") if isinstance(value, bytes | bytearray) else value)


def video_decoder(cfg) -> Decode:
    """Video-shard sample -> {"key", "video": [F, 3, H, W] float32 in [-1, 1], "caption"}.

    Clip geometry from cfg.video (height, width, fps), cfg.clip_frames and cfg.data.crop. A random
    crop draws from an RNG seeded by (cfg.data.seed, key), so a sample decodes identically on every
    run. Clips that fail to decode (VideoError) are dropped with a log line.
    """
    return functools.partial(_decode_video, num_frames=cfg.clip_frames, fps=cfg.video.fps,
                             height=cfg.video.height, width=cfg.video.width, crop=cfg.data.crop,
                             seed=cfg.data.seed)


def decode_video_sample(sample: dict, *, num_frames: int, fps: int, height: int, width: int,
                        crop: str, seed: int) -> dict:
    """Like `video_decoder`'s result, but raises data.video.VideoError instead of dropping."""
    from data.video import decode_clip

    key = sample["__key__"]
    meta = _json(sample["json"]) if "json" in sample else {}
    # A random crop also draws the temporal window (decode_clip uses one rng for both).
    rng = random.Random(mix_seed("crop", seed, key)) if crop == "random" else None
    video = decode_clip(bytes(sample["mp4"]), num_frames, fps, height, width, crop=crop, rng=rng,
                        start_s=meta.get("start"), end_s=meta.get("end"))
    return {"key": key, "video": torch.as_tensor(video), "caption": meta.get("caption", "")}


def _decode_video(sample: dict, **kw) -> dict | None:
    from data.video import VideoError

    try:
        return decode_video_sample(sample, **kw)
    except VideoError as e:
        log.warning("dropping clip %s: %s", sample.get("__key__"), getattr(e, "reason", e))
        return None


def latent_urls(latents_dir: str | Path) -> list[str]:
    """The latent shards `data.precompute` wrote in `latents_dir`, in file order."""
    urls = sorted(str(p) for p in Path(latents_dir).glob("shard-*.tar"))
    if not urls:
        raise FileNotFoundError(f"data.latents={latents_dir}: no latent shards (run `rollforge data precompute`)")
    return urls


def latent_decoder() -> Decode:
    """Latent-shard sample -> {"key", "latent": [F', C, h, w], "text": [L, D], "text_len": int64 [],
    "caption"} (the format `data.precompute` writes)."""
    return _decode_latent


def _decode_latent(sample: dict) -> dict:
    latent = st_load(bytes(sample["latent.safetensors"]))["latent"]
    text = st_load(bytes(sample["text.safetensors"]))
    meta = _json(sample["json"]) if "json" in sample else {}
    return {"key": sample["__key__"], "latent": latent, "text": text["text"],
            "text_len": text["text_len"].reshape(()).long(), "caption": meta.get("caption", "")}


# ------------------------------------------------------------------------------ Ray Data path


def _to_numpy(value):
    return value.numpy() if isinstance(value, torch.Tensor) else value


class _RayDecode:
    def __init__(self, decode: Decode | None):
        self.decode = decode

    def __call__(self, row: dict) -> list[dict]:
        raw = {k: (bytes(v) if isinstance(v, bytes | bytearray | memoryview) else v) for k, v in row.items()}
        out = self.decode(raw) if self.decode is not None else raw
        return [] if out is None else [{k: _to_numpy(v) for k, v in out.items()}]


def ray_dataset(urls: list[str], decode: Decode | None = None, **read_kwargs):
    """`ray.data.read_webdataset(urls)` (raw bytes, no Ray-side decoding) mapped through `decode`.

    Rows are the decoder's dicts with tensors as numpy arrays; samples it drops are filtered out.
    Ray must be running (infra.distributed.init_ray)."""
    import ray.data

    ds = ray.data.read_webdataset([str(u) for u in urls], decoder=None, **read_kwargs)
    return ds.flat_map(_RayDecode(decode))


def iter_ray_shard(shard, batch_size: int, drop_last: bool = False) -> Iterator[dict]:
    """Batches of a Ray Train dataset shard (`ray.train.get_dataset_shard(...)`) as torch tensors;
    non-numeric columns (keys, captions) stay lists."""
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=drop_last):
        yield {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) and v.dtype.kind in "biuf"
                   else list(v)) for k, v in batch.items()}


def read_shard_sizes(manifest_path: str) -> dict[str, int]:
    """url -> samples, from a precompute manifest.json (for ShardLoader(shard_sizes=...))."""
    import os

    with open(manifest_path) as f:
        manifest = json.load(f)
    root = os.path.dirname(os.path.abspath(manifest_path))
    return {os.path.join(root, name): int(entry["count"]) for name, entry in manifest["shards"].items()}


__all__ = ["ShardLoader", "decode_video_sample", "epoch_permutation", "iter_ray_shard", "latent_decoder",
           "mix_seed", "ray_dataset", "read_shard_sizes", "shards_for", "split_by_node", "split_by_worker",
           "video_decoder"]
