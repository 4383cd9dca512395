"""`rollforge data precompute`: video shards -> latent + text-embedding shards, with Ray Data.

Pipeline (one Ray Data stream over every input shard still to do):

    read_webdataset(video shards, raw bytes)
      -> map: decode the clip (data.loader.decode_video_sample; failures become rows with a reason)
      -> map_batches(_Encoder actor pool, concurrency=data.workers (capped: one CPU stays free for
         reading on CPU runs, one GPU per actor on GPU runs), batch_size=data.encode_batch):
         codec.encode(video [B, F, 3, H, W]) -> latent [B, F', C, h, w]; text.encode(captions) -> [B, L, D]
      -> driver: rows are grouped back by input shard; a shard whose every sample has come back is
         written, in input order, to `<latents>/<same name>.tar.partial`, then renamed.

One latent shard per video shard (same file name), so completion is per input shard: a rerun keeps
every latent shard whose manifest entry matches (same config fingerprint, same input name, size and
mtime) and whose tar exists, and produces only the others; nothing to do -> "up to date", nothing touched.
`manifest.json` is rewritten (atomically) after each shard, so an interrupted run loses at most the
shards in flight.

Latent-shard sample: `__key__`; `latent.safetensors` {"latent": [F', C, h, w] float32};
`text.safetensors` {"text": [L, D] float32 (zero past text_len), "text_len": int64 [1]}; `json` (the
video shard's metadata + source_shard, text_len). Read them with data.loader.latent_decoder().
Clips that cannot be used are skipped and counted per reason (data.video.REASONS, missing_caption,
missing_video) in the manifest; they never stop the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

log = logging.getLogger(__name__)

FORMAT = "rollforge-latents"
VERSION = 1
MANIFEST = "manifest.json"


# ------------------------------------------------------------------------------ fingerprints


def config_section(cfg) -> dict:
    """The settings a latent shard depends on (a change to any of them redoes every shard)."""
    section = {"format": FORMAT, "version": VERSION, "video": asdict(cfg.video), "codec": asdict(cfg.codec),
               "text": asdict(cfg.text), "clip_frames": cfg.clip_frames, "crop": cfg.data.crop,
               "missing_caption": cfg.data.missing_caption}
    if cfg.data.crop == "random":
        section["seed"] = cfg.data.seed  # the crop (and window) RNG is seeded by (seed, key)
    if cfg.codec.kind == "wan_vae" and cfg.codec.vae_path:
        p = Path(cfg.codec.vae_path).expanduser()
        section["vae_file"] = {"name": p.name, "size": p.stat().st_size if p.exists() else None}
    return section


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _sample_keys(path: Path) -> list[str]:
    """Sample keys of a webdataset tar in order, from its headers only (webdataset's key rule)."""
    keys: list[str] = []
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            directory, base = os.path.split(member.name)
            if base.startswith(".") or "." not in base:
                continue
            key = os.path.join(directory, base.split(".", 1)[0])
            if not keys or keys[-1] != key:
                keys.append(key)
    return keys


# ------------------------------------------------------------------------------ Ray stages


def _decode_row(row: dict, clip: dict, missing_caption: str) -> dict:
    """Video-shard row (raw bytes) -> key, shard, caption, meta, reason ("" = ok), video (f32 bytes)."""
    from data.loader import decode_video_sample
    from data.video import VideoError

    key, raw_meta = row["__key__"], row.get("json")
    try:
        meta = json.loads(bytes(raw_meta)) if raw_meta is not None else {}
    except ValueError:
        meta = {"bad_json": True}
    caption = meta.get("caption")
    out = {"key": key, "shard": os.path.basename(str(row["__url__"])), "caption": caption or "",
           "meta": json.dumps(meta), "reason": "", "video": b""}
    if not caption and missing_caption == "skip":
        out["reason"] = "missing_caption"
    elif row.get("mp4") is None:
        out["reason"] = "missing_video"
    else:
        try:
            video = decode_video_sample({"__key__": key, "mp4": bytes(row["mp4"]), "json": meta}, **clip)["video"]
            out["video"] = video.to(torch.float32).contiguous().numpy().tobytes()
        except VideoError as e:
            out["reason"] = e.reason
        except (ValueError, RuntimeError, OSError) as e:  # a decoder failure data.video did not classify
            log.warning("precompute: %s: %s: %s", key, type(e).__name__, e)
            out["reason"] = "unreadable"
    return out


class _Encoder:
    """Actor: decoded clips -> latent + text-embedding safetensors bytes (failed rows pass through)."""

    def __init__(self, cfg):
        from pipeline.networks.codecs import build_codec
        from pipeline.networks.text_encoders import build_text_encoder

        want = cfg.runtime.device
        self.device = torch.device("cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available())
                                   else "cpu")
        self.codec = build_codec(cfg.codec).to(self.device).eval()
        if self.device.type == "cuda" and cfg.runtime.dtype != "float32":
            self.codec.to(getattr(torch, cfg.runtime.dtype))
        self.text = build_text_encoder(cfg.text, device=self.device)
        self.shape = (cfg.clip_frames, 3, cfg.video.height, cfg.video.width)

    def __call__(self, batch: dict) -> dict:
        n = len(batch["key"])
        ok = [i for i in range(n) if not batch["reason"][i]]
        latents, texts = [b""] * n, [b""] * n
        if ok:
            video = torch.stack([torch.frombuffer(bytearray(batch["video"][i]), dtype=torch.float32)
                                 .reshape(self.shape) for i in ok])
            with torch.no_grad():
                latent = self.codec.encode(video.to(self.device)).float().cpu()
                text = self.text.encode([str(batch["caption"][i]) for i in ok]).float().cpu()
            nonzero = text.abs().amax(-1) > 0  # [B, L]; rows past a prompt's tokens are exactly zero
            lengths = torch.where(nonzero.any(-1), nonzero.int().cumsum(-1).argmax(-1) + 1, 0)
            for j, i in enumerate(ok):
                latents[i] = st_save({"latent": latent[j].contiguous()})
                texts[i] = st_save({"text": text[j].contiguous(), "text_len": lengths[j:j + 1].long()})
        return {"key": batch["key"], "shard": batch["shard"], "meta": batch["meta"], "reason": batch["reason"],
                "latent": np.array(latents, dtype=object), "text": np.array(texts, dtype=object)}


def _encode_stream(cfg, paths: list[Path], progress: bool):
    from infra.distributed import init_ray

    from infra.logs import reapply

    ray = init_ray(cfg.ray)
    ctx = ray.data.DataContext.get_current()
    reapply()  # Ray Data attaches its console handler on import
    bars, ctx.enable_progress_bars = ctx.enable_progress_bars, progress
    have = ray.cluster_resources()
    gpus, cpus = int(have.get("GPU", 0)), float(have.get("CPU", 1))
    gpu = cfg.runtime.device == "cuda" or (cfg.runtime.device == "auto" and gpus > 0)
    # Actors hold their CPU for the whole run: leave one for the read tasks or the stream deadlocks.
    actors = max(1, min(cfg.data.workers, gpus if gpu else int(cpus) - 1))
    if actors < cfg.data.workers:
        log.warning("precompute: %d encoder actors instead of data.workers=%d (%d CPUs, %d GPUs in Ray)",
                    actors, cfg.data.workers, cpus, gpus)
    share = 1.0 if gpu or cpus >= 2 else max(cpus, 1) / 2
    # On a 1-CPU Ray (a laptop, or a process that started Ray small) the actor and the read/decode
    # tasks must fit together, so each asks for half a CPU instead of a whole one.
    ds = ray.data.read_webdataset([str(p) for p in paths], decoder=None, num_cpus=share)
    clip = {"num_frames": cfg.clip_frames, "fps": cfg.video.fps, "height": cfg.video.height,
            "width": cfg.video.width, "crop": cfg.data.crop, "seed": cfg.data.seed}
    ds = ds.map(_decode_row, fn_kwargs={"clip": clip, "missing_caption": cfg.data.missing_caption}, num_cpus=share)
    ds = ds.map_batches(_Encoder, fn_constructor_args=(cfg,), compute=ray.data.ActorPoolStrategy(size=actors),
                        batch_size=cfg.data.encode_batch, batch_format="numpy",
                        num_gpus=1 if gpu else 0, num_cpus=share)
    try:
        yield from ds.iter_rows()
    finally:
        ctx.enable_progress_bars = bars


# ------------------------------------------------------------------------------ writing


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _write_shard(out_dir: Path, name: str, keys: list[str], rows: dict[str, dict]) -> dict:
    """Write one latent shard (input key order) via .partial + rename; return its manifest entry."""
    final = out_dir / name
    tmp = out_dir / (name + ".partial")
    skipped, written, shapes = Counter(), [], {}
    with wds.TarWriter(str(tmp), mtime=0) as sink:  # fixed mtime: same inputs, same bytes
        for key in keys:
            row = rows[key]
            if row["reason"]:
                skipped[str(row["reason"])] += 1
                continue
            meta = json.loads(row["meta"])
            text = st_load(bytes(row["text"]))
            meta.update(source_shard=name, text_len=int(text["text_len"][0]))
            if not shapes:
                shapes = {"latent": list(st_load(bytes(row["latent"]))["latent"].shape),
                          "text": list(text["text"].shape)}
            sink.write({"__key__": key, "latent.safetensors": bytes(row["latent"]),
                        "text.safetensors": bytes(row["text"]), "json": meta})
            written.append(key)
    os.replace(tmp, final)
    return {"count": len(written), "keys": written, "skipped": dict(skipped), "shapes": shapes,
            "bytes": final.stat().st_size}


def precompute(cfg, progress: bool = True) -> dict:
    """Encode every video shard of `cfg.data.shards` into a latent shard of `cfg.data.latents`.

    Returns {"status": "up to date" | "done", "written": [names], "kept": [names], "count",
    "skipped": {reason: n}, "manifest": path}. Resumable and idempotent (see the module docstring).
    """
    src, out = Path(cfg.data.shards), Path(cfg.data.latents)
    inputs = sorted(p for p in src.glob("*.tar") if p.is_file())
    if not inputs:
        raise FileNotFoundError(f"data.shards: no .tar video shards in {str(src)!r} (run `rollforge data shard`)")
    out.mkdir(parents=True, exist_ok=True)
    section = config_section(cfg)
    conf_fp = _digest(section)
    # Input identity: name, size and mtime (tar sizes are padded to 10 KiB, so size alone is coarse).
    stats = {p.name: p.stat() for p in inputs}
    sizes = {n: st.st_size for n, st in stats.items()}
    mtimes = {n: st.st_mtime_ns for n, st in stats.items()}
    identity = [{"name": n, "size": sizes[n], "mtime_ns": mtimes[n]} for n in sorted(stats)]
    fingerprint = _digest({"config": section, "inputs": identity})
    manifest_path = out / MANIFEST
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    old_shards = old.get("shards", {}) if old.get("config_fingerprint") == conf_fp else {}

    kept = {name: e for name, e in old_shards.items()
            if name in sizes and (e.get("source_size"), e.get("source_mtime_ns")) == (sizes[name], mtimes[name])
            and (out / name).is_file()}
    todo = [p for p in inputs if p.name not in kept]
    stale = [n for n in old.get("shards", {}) if n not in sizes and (out / n).is_file()]
    for name in stale:  # latent shards of inputs that are gone would otherwise still be read
        (out / name).unlink()
    for leftover in out.glob("*.partial"):
        leftover.unlink()

    manifest = {"format": FORMAT, "version": VERSION, "status": "partial", "fingerprint": fingerprint,
                "config_fingerprint": conf_fp, "config": section,
                "inputs": identity,
                "codec": {**asdict(cfg.codec), "latent_channels": cfg.codec.latent_channels},
                "text_encoder": {**asdict(cfg.text), "hidden_dim": cfg.text.hidden_dim},
                "shards": dict(kept)}

    def finish(written: list[str]) -> dict:
        shards = manifest["shards"]
        skipped = Counter()
        for entry in shards.values():
            skipped.update(entry["skipped"])
        shapes = next((e["shapes"] for _, e in sorted(shards.items()) if e["shapes"]), {})
        manifest.update(status="complete", count=sum(e["count"] for e in shards.values()),
                        skipped=dict(skipped), shapes=shapes, shards=dict(sorted(shards.items())))
        changed = json.loads(json.dumps(manifest)) != old
        if changed or written:  # (a shard written this run already rewrote it as "partial")
            _write_json(manifest_path, manifest)
        return {"status": "done" if written or changed or stale else "up to date", "written": written,
                "kept": sorted(kept), "count": manifest["count"], "skipped": manifest["skipped"],
                "manifest": str(manifest_path)}

    if not todo:
        result = finish([])
        log.info("precompute: %s (%d shards, %d clips)", result["status"], len(inputs), result["count"])
        return result

    expected: dict[str, list[str]] = {}
    for p in list(todo):
        try:
            expected[p.name] = list(dict.fromkeys(_sample_keys(p)))
        except (tarfile.TarError, OSError) as e:
            log.warning("precompute: skipping unreadable video shard %s (%s)", p, e)
            todo.remove(p)
            manifest.setdefault("unreadable_inputs", []).append(p.name)
            (out / p.name).unlink(missing_ok=True)  # an older latent shard of it is stale
    buffers: dict[str, dict[str, dict]] = {p.name: {} for p in todo}
    written: list[str] = []

    def complete(name: str) -> None:
        entry = _write_shard(out, name, expected[name], buffers.pop(name))
        manifest["shards"][name] = {"source": str(src / name), "source_size": sizes[name],
                                    "source_mtime_ns": mtimes[name], **entry}
        _write_json(manifest_path, manifest)  # still "partial": a crash after this keeps the shard
        written.append(name)
        if progress:
            print(f"precompute: {name}: {entry['count']} clips, skipped {entry['skipped'] or 0}", flush=True)

    for name in [n for n in buffers if not expected[n]]:
        complete(name)  # an empty input shard gives an empty latent shard
    if buffers:
        for row in _encode_stream(cfg, [src / n for n in buffers], progress):
            name = row["shard"]
            buffers[name][row["key"]] = row
            if len(buffers[name]) == len(expected[name]):
                complete(name)
    if buffers:
        raise RuntimeError(f"precompute: samples missing from the Ray stream for {sorted(buffers)}")
    return finish(sorted(written))


__all__ = ["MANIFEST", "config_section", "precompute"]
