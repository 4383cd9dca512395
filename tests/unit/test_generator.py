"""StreamingGenerator with the real MiniLM encoder: schedules, checkpoints, codecs, prompt switches."""

import json
from pathlib import Path

import numpy as np
import pytest

from infra.config import load_config, to_dict
from infra.schema import Config
from pipeline.config import ConfigError
from pipeline.generator import PromptSchedule, StreamingGenerator
from pipeline.networks.checkpoints import save_weights

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny():
    return load_config(Config, REPO / "configs/tiny.yaml")


@pytest.fixture(scope="module")
def gen(tiny):
    return StreamingGenerator(tiny)


def frames(gen, schedule, n, **kw):
    return np.concatenate(list(gen.stream_video(schedule, n, **kw)))


def test_lengths_and_switch_blocks(gen):
    assert gen.blocks_for_seconds(3) == 16  # 48 frames at 16 fps, 3 per block
    assert gen.blocks_for_seconds(0.01) == 1
    assert gen.block_at_second(0) == 0 and gen.block_at_second(1.0) == 6 and gen.block_at_second(0.9) == 5


def test_video_frames_stream_in_blocks(gen):
    chunks = list(gen.stream_video(PromptSchedule.single("a red ball"), 5))
    assert [c.shape for c in chunks] == [(3, 32, 32, 3)] * 5 and chunks[0].dtype == np.uint8


@pytest.mark.parametrize("sampler", ["rolling", "block_ar"])
def test_prompt_switch_changes_only_what_follows(gen, sampler):
    n = 10
    base = frames(gen, PromptSchedule.single("a red ball"), n, sampler=sampler)
    sw = frames(gen, PromptSchedule.from_entries([(0, "a red ball"), (1.0, "a blue cube in the snow")]), n, sampler=sampler)
    cut = 6 * 3  # block 6 starts at 1.0 s
    assert np.array_equal(base[:cut], sw[:cut])
    assert not np.array_equal(base[cut:], sw[cut:])


def test_bidirectional_and_recompute_paths(gen):
    bi = frames(gen, PromptSchedule.single("a red ball"), 4, sampler="bidirectional")
    assert bi.shape == (12, 32, 32, 3)
    cached = frames(gen, PromptSchedule.single("a red ball"), 7)
    ref = frames(gen, PromptSchedule.single("a red ball"), 7, recompute=True)
    assert np.abs(cached.astype(int) - ref.astype(int)).max() <= 1  # equal up to uint8 rounding
    with pytest.raises(ValueError, match="one clip"):
        frames(gen, PromptSchedule.from_entries([(0, "a"), (1, "b")]), 4, sampler="bidirectional")


def test_checkpoint_directory_round_trip(tmp_path, tiny, gen):
    save_weights(gen.model, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"model": to_dict(tiny.model)}))
    other = load_config(Config, REPO / "configs/tiny.yaml", ["runtime.seed=5"])  # different random init
    loaded = StreamingGenerator(other, checkpoint=tmp_path)
    s = PromptSchedule.single("a red ball")
    assert np.array_equal(frames(gen, s, 3, seed=1), frames(loaded, s, 3, seed=1))
    bad = dict(to_dict(tiny.model), num_layers=3)
    (tmp_path / "config.json").write_text(json.dumps({"model": bad}))
    with pytest.raises(ConfigError, match="model.num_layers"):
        StreamingGenerator(tiny, checkpoint=tmp_path)


def test_wan_vae_codec_streams_through_generator():
    cfg = load_config(Config, None, ["codec.kind=wan_vae", "codec.spatial_factor=8", "codec.temporal_factor=4",
                                     "codec.vae_dim=8", "codec.z_dim=4", "model.in_dim=4", "model.out_dim=4",
                                     "video.height=32", "video.width=32"])
    g = StreamingGenerator(cfg)
    out = frames(g, PromptSchedule.single("a red ball"), 2)
    assert out.shape == (1 + 4 * 5, 32, 32, 3)  # 6 latent frames -> 1 + 4*5 video frames


def test_schedule_files(tmp_path):
    (tmp_path / "s.yaml").write_text("- {at: 0, prompt: a}\n- {at: 2.5, prompt: b}\n")
    assert PromptSchedule.from_file(tmp_path / "s.yaml").entries == ((0.0, "a"), (2.5, "b"))
    (tmp_path / "s.jsonl").write_text('{"at": 0, "prompt": "a"}\n{"at": 1, "prompt": "b"}\n')
    assert len(PromptSchedule.from_file(tmp_path / "s.jsonl").entries) == 2
    (tmp_path / "bad.yaml").write_text("- {time: 0, prompt: a}\n")
    with pytest.raises(ValueError, match="'at'"):
        PromptSchedule.from_file(tmp_path / "bad.yaml")
    with pytest.raises(ValueError, match="start at 0"):
        PromptSchedule.from_entries([(1.0, "a")])
