"""`rollforge data shard`: videos + captions -> webdataset tar shards of mp4 clips (Ray-parallel).

Inputs: a folder (recursive; VIDEO_EXTENSIONS, case-insensitive; caption in a sidecar NAME.txt or
NAME.json with "caption"/"text"), a single video, and/or a CSV/JSONL manifest (`path`, `caption`,
optional `start`, `end` in seconds; relative paths are relative to the manifest's folder; an empty
manifest caption falls back to the sidecar).

Two passes over Ray tasks (`init_ray`): (1) per input: caption lookup, read, sha256, remux to mp4
when needed (data.video.remux_to_mp4), probe — metadata only comes back; (2) per sample of each
shard to (re)write: the mp4 bytes, fetched in order with a bounded prefetch window, so the driver
never holds more than a few shards in memory (non-mp4 inputs are remuxed twice; mp4 is a plain read).

Skip reasons, checked in this order per input: bad_manifest_row, missing_file, missing_caption
(policy "skip"; "empty" keeps the sample with caption ""), empty_file, unreadable, no_frames,
too_short (fewer than `min_frames` source frames in [start, end)), duplicate_key.

Keys (`make_key`): from the path relative to the input folder (or as written in the manifest):
"." / ".." / empty components dropped, the extension stripped, each component's runs of characters
outside [A-Za-z0-9_-] replaced by "_", components joined with "__"; a manifest row with start/end
appends "_t{start}-{end}" ("." -> "p"). Inputs are then taken in input order (folder files sorted by
relative path, then manifest rows in file order): an input whose key equals an earlier kept input's
key AND whose sha256 equals that input's is skipped as duplicate_key; otherwise a colliding key gets
"-" + the first 10 (then 16, then 64) hex digits of its sha256, the first free one. The first
occurrence always keeps the plain key. Copies under different paths have different keys and are kept.

Output: shard-%06d.tar written through webdataset.ShardWriter as `.partial` and renamed by its
`post` callback, samples sorted by key (same grouping on re-runs); shards.json records each shard's
keys, a fingerprint of its samples' metadata and its size: a shard whose record matches and whose
.tar exists with that size is not rewritten. Stray .partial files and shard-*.tar files beyond the
current plan are removed. summary.json: ok + sum(skipped) == total_inputs; skipped.jsonl lists the
skipped inputs with their reason and message.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from data.config import MISSING_CAPTION, VIDEO_EXTENSIONS
from data.video import VideoError, probe_bytes, remux_to_mp4
from infra.distributed import RayConfig, init_ray
from pipeline.config import ConfigError

SKIP_REASONS = ("empty_file", "unreadable", "no_frames", "too_short", "missing_caption", "duplicate_key",
                "bad_manifest_row", "missing_file")
SHARD_NAME = "shard-%06d.tar"
MANIFEST_SUFFIXES = (".csv", ".jsonl")
_SHARD_RE = re.compile(r"shard-\d{6}\.tar")


@dataclass
class Entry:
    """One input video: `source` as given (reported), `path` to read, `rel` for the key."""

    source: str
    path: str
    rel: str
    caption: str | None = None
    start: float | None = None
    end: float | None = None


def make_key(rel: str, start: float | None = None, end: float | None = None) -> str:
    """Sanitised webdataset key of a relative path (+ segment); see the module docstring."""
    parts = [p for p in re.split(r"[\\/]+", rel) if p not in ("", ".", "..")]
    if parts:
        parts[-1] = os.path.splitext(parts[-1])[0] or parts[-1]
    key = "__".join(re.sub(r"[^A-Za-z0-9_-]+", "_", p) for p in parts) or "video"
    if start is not None or end is not None:
        fmt = lambda v: "" if v is None else f"{v:g}".replace(".", "p").replace("+", "")  # noqa: E731
        key += f"_t{fmt(start)}-{fmt(end)}"
    if len(key) > 160:  # keep tar member names short; the hash keeps truncated keys distinct
        key = key[:149] + "-" + hashlib.sha256(key.encode()).hexdigest()[:10]
    return key


# ---------------------------------------------------------------- inputs

def _seconds(v, name: str) -> float | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, bool):
        raise ValueError(f"{name} is not a number: {v!r}")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a number: {v!r}") from None
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return x


def _row_entry(row, base: Path) -> Entry:
    if not isinstance(row, dict):
        raise ValueError("row is not an object")
    p = row.get("path")
    if not isinstance(p, str) or not p.strip():
        raise ValueError("missing path")
    p = p.strip()
    start, end = _seconds(row.get("start"), "start"), _seconds(row.get("end"), "end")
    if start is not None and end is not None and start >= end:
        raise ValueError(f"start {start} >= end {end}")
    cap = row.get("caption", row.get("text"))
    full = Path(p) if os.path.isabs(p) else base / p
    rel = p
    if os.path.isabs(p):
        r = os.path.relpath(p, base)
        rel = r if not r.startswith("..") else p
    return Entry(source=p, path=str(full), rel=rel, caption=None if cap is None else str(cap),
                 start=start, end=end)


def read_manifest(path: str) -> tuple[list[Entry], list[dict]]:
    """(entries, skipped bad rows) of a CSV or JSONL manifest; blank JSONL lines are ignored."""
    base = Path(path).resolve().parent
    rows: list[tuple[int, object]] = []
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        if path.lower().endswith(".jsonl"):
            for ln, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append((ln, json.loads(line)))
                    except json.JSONDecodeError as e:
                        rows.append((ln, ValueError(f"bad JSON: {e}")))
        else:
            reader = csv.DictReader(f)
            rows.extend((reader.line_num, row) for row in reader)
    entries, bad = [], []
    for ln, row in rows:
        try:
            if isinstance(row, Exception):
                raise row
            entries.append(_row_entry(row, base))
        except ValueError as e:
            bad.append({"source": f"{path}:{ln}", "reason": "bad_manifest_row", "message": str(e)})
    return entries, bad


def collect_inputs(input: str | None, manifest: str | None) -> tuple[list[Entry], list[dict]]:
    """Entries (folder files sorted by relative path, then manifest rows) and bad manifest rows."""
    if not input and not manifest:
        raise ConfigError("data.shard: give --input (folder, video or manifest) and/or --manifest")
    entries: list[Entry] = []
    bad: list[dict] = []
    manifests = [manifest] if manifest else []
    if input:
        p = Path(input)
        if p.is_dir():
            files = [(f.relative_to(p).as_posix(), f) for f in p.rglob("*")
                     if f.suffix.lower() in VIDEO_EXTENSIONS and f.is_file()]
            entries += [Entry(source=os.path.join(input, rel), path=str(f.resolve()), rel=rel)
                        for rel, f in sorted(files)]
        elif p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            manifests.insert(0, input)
        elif p.is_file():
            entries.append(Entry(source=input, path=str(p.resolve()), rel=p.name))
        else:
            raise ConfigError(f"data.shard.input: {input!r} not found")
    for m in manifests:
        if not Path(m).is_file() or Path(m).suffix.lower() not in MANIFEST_SUFFIXES:
            raise ConfigError(f"data.shard.manifest: {m!r} is not a .csv/.jsonl file")
        e, b = read_manifest(m)
        entries += e
        bad += b
    return entries, bad


def _caption(entry: Entry) -> str | None:
    if entry.caption is not None and entry.caption.strip():
        return entry.caption.strip()
    stem = os.path.splitext(entry.path)[0]
    try:
        with open(stem + ".txt", encoding="utf-8", errors="replace") as f:
            if text := f.read().strip():
                return text
    except OSError:
        pass
    try:
        with open(stem + ".json", encoding="utf-8") as f:
            d = json.load(f)
        cap = d.get("caption") or d.get("text") if isinstance(d, dict) else None
        if isinstance(cap, str) and cap.strip():
            return cap.strip()
    except (OSError, ValueError):
        pass
    return None


# ---------------------------------------------------------------- Ray tasks

def _segment_frames(n: int, fps: float, start: float | None, end: float | None) -> int:
    """Source frames i (shown at i / fps) with start <= i / fps < end."""
    lo = math.ceil((start or 0.0) * fps - 1e-6)
    hi = n if end is None else min(n, math.ceil(end * fps - 1e-6))
    return max(0, hi - lo)


def inspect_input(entry: Entry, missing_caption: str, min_frames: int) -> dict:
    """Pass 1 (a Ray task): {"status": "ok"|reason, "message", and for ok: caption, sha256, info, size}."""
    try:
        if not os.path.isfile(entry.path):
            return {"status": "missing_file", "message": f"not found: {entry.path}"}
        caption = _caption(entry)
        if caption is None:
            if missing_caption == "skip":
                return {"status": "missing_caption", "message": "no caption (manifest, .txt or .json)"}
            caption = ""
        data = Path(entry.path).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        mp4 = remux_to_mp4(data, Path(entry.path).suffix)
        info = probe_bytes(mp4)
        seg = _segment_frames(info.num_frames, info.fps, entry.start, entry.end)
        if seg < min_frames:
            return {"status": "too_short", "message": f"{seg} frames in segment < min_frames {min_frames}"}
        return {"status": "ok", "message": "", "caption": caption, "sha256": sha, "info": asdict(info),
                "size": len(mp4)}
    except VideoError as e:
        return {"status": e.reason, "message": e.message}
    except Exception as e:  # never let one bad file stop the run
        return {"status": "unreadable", "message": f"{type(e).__name__}: {e}"}


def load_mp4(entry: Entry, sha256: str) -> bytes:
    """Pass 2 (a Ray task): the sample's mp4 bytes; refuses a file changed since pass 1."""
    data = Path(entry.path).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise RuntimeError(f"{entry.source} changed during sharding; re-run")
    return remux_to_mp4(data, Path(entry.path).suffix)


# ---------------------------------------------------------------- driver

def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled)


def _inspect_all(ray, entries: list[Entry], missing_caption: str, min_frames: int, window: int, bar) -> list[dict]:
    task = ray.remote(num_cpus=1, max_retries=0)(inspect_input)
    bar_id = bar.add_task("probe videos", total=len(entries))
    results: list[dict] = [{}] * len(entries)
    todo = iter(enumerate(entries))
    pending: dict = {}
    while True:
        for i, e in todo:
            pending[task.remote(e, missing_caption, min_frames)] = i
            if len(pending) >= window:
                break
        if not pending:
            return results
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except Exception as e:  # worker crash (e.g. a decoder segfault) = unreadable input
                results[i] = {"status": "unreadable", "message": f"worker failed: {type(e).__name__}"}
            bar.advance(bar_id)


def _assign_keys(entries: list[Entry], results: list[dict], skipped: list[dict]) -> list[dict]:
    """Good samples sorted by key; duplicates appended to `skipped` (rule: module docstring)."""
    used: set[str] = set()
    kept_sha: dict[str, set[str]] = {}
    good = []
    for e, r in zip(entries, results):
        if r["status"] != "ok":
            skipped.append({"source": e.source, "reason": r["status"], "message": r["message"]})
            continue
        base, sha = make_key(e.rel, e.start, e.end), r["sha256"]
        if sha in kept_sha.get(base, ()):
            skipped.append({"source": e.source, "reason": "duplicate_key", "message": f"same key {base} and content"})
            continue
        key = next(k for k in (base, f"{base}-{sha[:10]}", f"{base}-{sha[:16]}", f"{base}-{sha}") if k not in used)
        used.add(key)
        kept_sha.setdefault(base, set()).add(sha)
        meta = {"caption": r["caption"], **{k: r["info"][k] for k in ("fps", "num_frames", "width", "height", "duration")},
                "source": e.source, "sha256": sha, "start": e.start, "end": e.end}
        good.append({"key": key, "entry": e, "meta": meta, "size": r["size"]})
    return sorted(good, key=lambda g: g["key"])


def _fingerprint(group: list[dict]) -> str:
    return hashlib.sha256(json.dumps([[g["key"], g["meta"]] for g in group], sort_keys=True).encode()).hexdigest()


def _ordered_mp4(ray, samples: list[dict], window: int):
    """Yield each sample's mp4 bytes in order, at most `window` Ray tasks in flight."""
    task = ray.remote(num_cpus=1)(load_mp4)
    it = iter(samples)
    queue: deque = deque()
    for s in it:
        queue.append(task.remote(s["entry"], s["meta"]["sha256"]))
        if len(queue) >= window:
            break
    while queue:
        data = ray.get(queue.popleft())
        for s in it:
            queue.append(task.remote(s["entry"], s["meta"]["sha256"]))
            break
        yield data


def _write_shard(out: Path, index: int, group: list[dict], mp4s, shard_size: int, advance) -> None:
    """One shard through webdataset.ShardWriter: `.partial` first, renamed by `post` once closed."""
    import webdataset as wds

    def finish(fname: str) -> None:
        os.replace(fname, fname[: -len(".partial")])

    writer = wds.ShardWriter(str(out / (SHARD_NAME + ".partial")), maxcount=shard_size, maxsize=float("inf"),
                             post=finish, start_shard=index, verbose=0, mtime=0.0)
    try:
        for g in group:
            writer.write({"__key__": g["key"], "mp4": next(mp4s), "json": g["meta"]})
            advance()
    except BaseException:
        writer.post = None  # ShardWriter.close() would otherwise publish the half-written shard
        writer.close()
        (out / ((SHARD_NAME % index) + ".partial")).unlink(missing_ok=True)
        raise
    writer.close()


def shard_videos(input: str | None, output: str, manifest: str | None = None, shard_size: int = 64,
                 workers: int = 2, missing_caption: str = "skip", ray_cfg: RayConfig | None = None,
                 progress: bool = True, min_frames: int = 1) -> dict:
    """Shard `input` (folder / video / manifest) and/or `manifest` into `output`; returns the summary
    (also written to output/summary.json). See the module docstring for keys, skips and re-runs."""
    if missing_caption not in MISSING_CAPTION:
        raise ConfigError(f"data.missing_caption: unknown policy {missing_caption!r}; valid: {', '.join(MISSING_CAPTION)}")
    for name, v in (("shard_size", shard_size), ("workers", workers), ("min_frames", min_frames)):
        if v < 1:
            raise ConfigError(f"data.{name}: must be positive")
    entries, skipped = collect_inputs(input, manifest)
    total = len(entries) + len(skipped)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for p in out.glob("shard-*.tar.partial"):  # leftovers of a crashed run: never complete
        p.unlink()
    ray = init_ray(ray_cfg or RayConfig(num_cpus=workers))
    window = max(4, 4 * workers)
    with _progress(progress) as bar:
        results = _inspect_all(ray, entries, missing_caption, min_frames, window, bar)
        good = _assign_keys(entries, results, skipped)
        plan = [good[i: i + shard_size] for i in range(0, len(good), shard_size)]
        names = [SHARD_NAME % i for i in range(len(plan))]
        record_path = out / "shards.json"
        try:
            record = json.loads(record_path.read_text())["shards"]
            assert isinstance(record, dict)
        except Exception:
            record = {}
        record = {n: r for n, r in record.items() if n in names}
        for p in out.glob("shard-*.tar"):  # shards of an earlier, larger plan
            if _SHARD_RE.fullmatch(p.name) and p.name not in names:
                p.unlink()
        todo = []
        for i, (name, group) in enumerate(zip(names, plan)):
            rec, tar = record.get(name), out / name
            if not (rec and rec.get("keys") == [g["key"] for g in group] and rec.get("fingerprint") == _fingerprint(group)
                    and tar.is_file() and tar.stat().st_size == rec.get("bytes")):
                todo.append(i)
                record.pop(name, None)
        _write_json(record_path, {"shards": record})
        bar_id = bar.add_task("write shards", total=sum(len(plan[i]) for i in todo))
        mp4s = _ordered_mp4(ray, [g for i in todo for g in plan[i]], window)
        for i in todo:
            _write_shard(out, i, plan[i], mp4s, shard_size, lambda: bar.advance(bar_id))
            record[names[i]] = {"keys": [g["key"] for g in plan[i]], "fingerprint": _fingerprint(plan[i]),
                                "bytes": (out / names[i]).stat().st_size}
            _write_json(record_path, {"shards": record})
    counts = {r: 0 for r in SKIP_REASONS}
    for s in skipped:
        counts[s["reason"]] += 1
    summary = {"ok": len(good), "skipped": counts, "shards": names, "total_inputs": total,
               "bytes": sum(g["size"] for g in good)}
    assert summary["ok"] + sum(counts.values()) == total, summary
    _write_json(out / "summary.json", summary)
    with open(out / "skipped.jsonl", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in skipped)
    return summary
