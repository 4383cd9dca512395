"""precompute: real mp4 video shards -> latent shards (pixel codec, real MiniLM), resumable, idempotent."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import webdataset as wds

from data.loader import ShardLoader, latent_decoder, read_shard_sizes
from data.precompute import precompute
from infra.config import load_config
from infra.schema import Config

REPO = Path(__file__).resolve().parents[2]
FPS, SIZE = 16, 32
# shard -> [(key, seconds, caption)]; "short" has 8 frames < clip_frames (18): counted, not fatal
CLIPS = {
    0: [("a_red", 2.0, "a red square moving right"), ("b_blue", 2.0, "a blue gradient")],
    1: [("c_green", 2.0, "green stripes scrolling"), ("d_short", 0.5, "too short to use")],
    2: [("e_noise", 2.0, "a flickering pattern"), ("f_dark", 1.5, "a dark fading scene")],
}


def make_mp4(seconds: float, seed: int) -> bytes:
    """A small real h264 clip with content that differs per seed and moves per frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(SIZE, SIZE, 3), dtype=np.uint8)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for i in range(round(seconds * FPS)):
            frame = np.roll(base, shift=2 * i, axis=1)
            frame[:, :, seed % 3] = (frame[:, :, seed % 3].astype(int) + 8 * i).clip(0, 255)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> Config:
    root = tmp_path_factory.mktemp("precompute")
    shards = root / "shards"
    shards.mkdir()
    seed = 0
    for index, clips in CLIPS.items():
        with wds.TarWriter(str(shards / f"shard-{index:06d}.tar")) as w:
            for key, seconds, caption in clips:
                data = make_mp4(seconds, seed)
                seed += 1
                n = round(seconds * FPS)
                w.write({"__key__": key, "mp4": data,
                         "json": {"caption": caption, "fps": FPS, "num_frames": n, "width": SIZE, "height": SIZE,
                                  "duration": n / FPS, "source": f"/videos/{key}.mp4",
                                  "sha256": hashlib.sha256(data).hexdigest(), "start": None, "end": None}})
    return load_config(Config, REPO / "configs/tiny.yaml",
                       [f"data.shards={shards}", f"data.latents={root / 'latents'}", "data.workers=1",
                        "data.encode_batch=2", "ray.num_cpus=2"])


@pytest.fixture(scope="module")
def first_run(cfg) -> dict:
    return precompute(cfg, progress=False)


def _snapshot(latents: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(latents.glob("*.tar"))}


def test_latent_shards_and_manifest(cfg, first_run):
    assert first_run["status"] == "done" and first_run["count"] == 5
    assert first_run["written"] == [f"shard-{i:06d}.tar" for i in range(3)]
    assert first_run["skipped"] == {"too_short": 1}
    manifest = json.loads(Path(first_run["manifest"]).read_text())
    assert manifest["status"] == "complete" and manifest["count"] == 5
    assert manifest["shapes"] == {"latent": [18, 48, 8, 8], "text": [32, 384]}
    assert manifest["codec"]["kind"] == "pixel" and manifest["text_encoder"]["kind"] == "minilm"
    assert manifest["shards"]["shard-000001.tar"]["keys"] == ["c_green"]
    assert manifest["shards"]["shard-000001.tar"]["skipped"] == {"too_short": 1}
    assert [i["name"] for i in manifest["inputs"]] == [f"shard-{i:06d}.tar" for i in range(3)]
    assert len(manifest["fingerprint"]) == 64
    assert not list(Path(cfg.data.latents).glob("*.partial"))

    # read back through the training loader; compare with a direct decode + encode
    from data.video import decode_clip
    from pipeline.networks.codecs import build_codec
    from pipeline.networks.text_encoders import build_text_encoder

    sizes = read_shard_sizes(first_run["manifest"])
    loader = ShardLoader(sorted(sizes), 0, 1, 0, 0, 0, latent_decoder(), shard_sizes=sizes)
    assert loader.samples_per_epoch == 5
    it = iter(loader)
    samples = {b["key"][0]: b for b in (next(it) for _ in range(5))}
    assert sorted(samples) == ["a_red", "b_blue", "c_green", "e_noise", "f_dark"]
    src = {s["__key__"]: s for s in wds.WebDataset(str(Path(cfg.data.shards) / "shard-000000.tar"),
                                                     shardshuffle=False)}
    video = decode_clip(src["a_red"]["mp4"], 18, 16, 32, 32)
    expect = build_codec(cfg.codec).encode(video[None])[0]
    got = samples["a_red"]
    assert got["latent"].shape == (1, 18, 48, 8, 8) and got["latent"].dtype == torch.float32
    torch.testing.assert_close(got["latent"][0], expect, rtol=0, atol=0)
    text = build_text_encoder(cfg.text).encode(["a red square moving right"])[0]
    torch.testing.assert_close(got["text"][0], text)
    n = int(got["text_len"][0])
    assert 2 < n < 32 and got["text"][0, n:].abs().sum() == 0 and got["text"][0, n - 1].abs().sum() > 0
    assert got["caption"] == ["a red square moving right"]


def test_second_run_does_nothing(cfg, first_run):
    latents = Path(cfg.data.latents)
    before = _snapshot(latents)
    manifest_mtime = (latents / "manifest.json").stat().st_mtime_ns
    again = precompute(cfg, progress=False)
    assert again["status"] == "up to date" and again["written"] == [] and again["count"] == 5
    assert _snapshot(latents) == before
    assert (latents / "manifest.json").stat().st_mtime_ns == manifest_mtime


def test_deleted_shard_is_regenerated_alone(cfg, first_run):
    latents = Path(cfg.data.latents)
    before = _snapshot(latents)
    (latents / "shard-000002.tar").unlink()
    (latents / "shard-000009.tar.partial").write_bytes(b"left over by a killed run")
    result = precompute(cfg, progress=False)
    assert result["status"] == "done" and result["written"] == ["shard-000002.tar"]
    assert result["kept"] == ["shard-000000.tar", "shard-000001.tar"]
    after = _snapshot(latents)
    for name in ("shard-000000.tar", "shard-000001.tar"):
        assert after[name] == before[name], f"{name} was rewritten"
    assert after["shard-000002.tar"][1] == before["shard-000002.tar"][1], "regeneration is deterministic"
    assert not list(latents.glob("*.partial"))
    assert json.loads((latents / "manifest.json").read_text())["count"] == 5
