"""The shipped world teacher (models/world_teacher): the laptop's stand-in for Wan2.1's weights.

It must stay loadable by the configs that use it, small enough to live in the repository, and it
must draw: its bidirectional samples of world prompts no training video used pass the world checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.world import world_truths
from evaluation.world_checks import check_world_frames, chunk_pass_rates
from infra.config import load_config
from infra.schema import Config
from pipeline.networks.checkpoints import check_export_model

REPO = Path(__file__).resolve().parents[2]
TEACHER = REPO / "models" / "world_teacher"
MAX_BYTES = 16 * 1024 * 1024


def test_shipped_export_is_complete_small_and_fits_its_configs():
    assert {p.name for p in TEACHER.iterdir()} >= {"model.safetensors", "config.json", "config.yaml", "README.md"}
    assert (TEACHER / "model.safetensors").stat().st_size <= MAX_BYTES
    meta = json.loads((TEACHER / "config.json").read_text())
    assert meta["stage"] == "teacher" and meta["ema"] is True and meta["dtype"] == "float16"
    vocabs = set()
    for name in ("world_teacher.yaml", "demo.yaml"):
        cfg = load_config(Config, REPO / "configs" / name)
        vocabs.add(cfg.run.demo.world_vocab)
        check_export_model(TEACHER, cfg.model)  # raises naming the first differing model.* key
        for section in ("video", "codec", "stream"):
            saved = meta[section]
            mine = json.loads(json.dumps(getattr(cfg, section).__dict__, default=list))
            assert {k: saved[k] for k in mine if k in saved} == {k: mine[k] for k in mine if k in saved}, (name, section)
    assert len(vocabs) == 1, f"the demo's prompts must come from the teacher's world: {sorted(vocabs)}"


@pytest.mark.slow  # ~5 s: two 20-step bidirectional samples with the real 5 M-parameter teacher
def test_shipped_teacher_draws_unseen_world_prompts():
    from pipeline.generator import PromptSchedule, StreamingGenerator

    cfg = load_config(Config, REPO / "configs" / "demo.yaml")
    gen = StreamingGenerator(cfg, checkpoint=TEACHER)
    seconds = cfg.codec.video_frames(cfg.stream.context_frames) / cfg.video.fps
    truths = world_truths(2, 32, 32, cfg.video.fps, seconds, seed=cfg.run.evaluate.world_seed,
                          vocab=cfg.run.demo.world_vocab)
    checks = []
    for truth in truths:
        frames = np.concatenate(list(gen.stream_video(PromptSchedule.single(truth["caption"]), cfg.stream.context_blocks,
                                                      "bidirectional")))
        checks.append(check_world_frames(frames, truth, chunk_seconds=seconds / 3))
    rate = chunk_pass_rates(checks)["world_chunk_pass_rate"]
    assert rate >= 0.5, [c["failures"][:2] for c in checks]
