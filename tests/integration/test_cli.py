"""The `rollforge` console script, run as a user runs it (subprocess of the installed entry point)."""

import json
from pathlib import Path

import av
import pytest
from conftest import rollforge

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs/tiny.yaml")


def decode(path):
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        return frames, float(stream.average_rate)


@pytest.mark.parametrize("cmd", [[], ["generate"], ["bench", "stream"], ["config"]])
def test_help(cmd):
    out = rollforge(*cmd, "--help").stdout
    assert "usage: rollforge" in out and ("--config" in out or cmd == [])


def test_generate_writes_playable_mp4_and_resolved_config(tmp_path):
    out = tmp_path / "clip.mp4"
    proc = rollforge("generate", "--config", TINY, "--prompt", "a red ball", "--seconds", "3", "--out", str(out),
                     "runtime.seed=3")
    frames, fps = decode(out)
    assert len(frames) == 48 and fps == 16 and frames[0].shape == (32, 32, 3)
    assert "wrote" in proc.stdout
    resolved = (tmp_path / "clip.config.yaml").read_text()
    assert "seed: 3" in resolved


def test_generate_with_prompt_schedule_and_block_ar(tmp_path):
    sched = tmp_path / "prompts.yaml"
    sched.write_text("- {at: 0, prompt: a red ball}\n- {at: 1, prompt: a blue cube}\n")
    out = tmp_path / "switch.mp4"
    rollforge("generate", "--config", TINY, "--prompt-schedule", str(sched), "--seconds", "2", "--sampler", "block_ar",
              "--out", str(out))
    assert len(decode(out)[0]) == 33  # 11 blocks of 3 frames cover 2 s


def test_bench_stream_json():
    res = json.loads(rollforge("bench", "stream", "--config", TINY, "--seconds", "2", "--json").stdout)
    for key in ("latent_frames", "video_frames", "video_seconds", "wall_s", "fps", "first_frame_latency_s",
                "peak_rss_bytes", "kv_cache_bytes"):
        assert key in res
    assert res["video_frames"] == 33 and res["fps"] > 0 and res["kv_cache_bytes"] > 0


def test_bad_config_fails_with_named_key():
    proc = rollforge("config", "--config", TINY, "stream.window_blocks=2", check=False)
    assert proc.returncode == 2 and "stream.window_blocks" in proc.stderr
    proc = rollforge("generate", "--config", TINY, "--out", "/tmp/x.mp4", "--prompt", "p", "model.nope=1", check=False)
    assert proc.returncode == 2 and "model.nope" in proc.stderr


def test_data_commands_end_to_end(tmp_path):
    """demo -> shard -> precompute -> prompts through the console script, on real encoders."""
    rollforge("data", "demo", "--config", TINY, "--out", str(tmp_path / "videos"), "--world", "3", "--seconds", "2",
              "--no-real")
    assert len(list((tmp_path / "videos/world").glob("*.mp4"))) == 3
    (tmp_path / "videos/world/broken.mp4").write_bytes(b"not a video")
    (tmp_path / "videos/world/broken.txt").write_text("a broken file\n")
    proc = rollforge("data", "shard", "--config", TINY, "--input", str(tmp_path / "videos"),
                     "--output", str(tmp_path / "shards"), "--shard-size", "2")
    summary = json.loads((tmp_path / "shards/summary.json").read_text())
    assert summary["ok"] == 3 and summary["skipped"]["unreadable"] == 1 and "3 videos" in proc.stdout
    assert (tmp_path / "shards/config.resolved.yaml").is_file()
    latents = tmp_path / "latents"
    over = [f"data.shards={tmp_path / 'shards'}", f"data.latents={latents}", "data.workers=1"]
    rollforge("data", "precompute", "--config", TINY, *over)
    manifest = json.loads((latents / "manifest.json").read_text())
    assert manifest["count"] == 3
    again = rollforge("data", "precompute", "--config", TINY, *over).stdout
    assert "up to date" in again
    (tmp_path / "p.txt").write_text("a red ball\n# not a prompt\na blue cube\n")
    rollforge("data", "prompts", "--config", TINY, "--input", str(tmp_path / "p.txt"), "--out", str(tmp_path / "pr"))
    assert (tmp_path / "pr/prompts.safetensors").is_file()
