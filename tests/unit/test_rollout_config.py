"""rollouts.* config: defaults keep rollouts in the learner; bad values name their key."""

from pathlib import Path

import pytest

from infra.config import load_config
from infra.schema import Config
from pipeline.config import ConfigError
from training.config import RolloutConfig, TrainConfig

TINY = Path(__file__).resolve().parents[2] / "configs/tiny.yaml"


def test_defaults_and_overrides():
    cfg = load_config(Config, TINY)
    assert cfg.rollouts == RolloutConfig() and cfg.rollouts.workers == 0
    cfg = load_config(Config, TINY, ["rollouts.workers=2", "rollouts.cpus_per_worker=0.5", "rollouts.history_blocks=5",
                                     "rollouts.get_timeout_s=30"])
    assert (cfg.rollouts.workers, cfg.rollouts.cpus_per_worker, cfg.rollouts.history_blocks) == (2, 0.5, 5)
    assert cfg.rollouts.get_timeout_s == 30.0


def test_history_length_is_drawn_like_the_in_learner_rollout_minus_the_context():
    ro = RolloutConfig()
    assert TrainConfig().rollout_range(6) == (6, 8)  # the reference: context, +1, +2 blocks
    assert ro.history_range(TrainConfig(), context_blocks=6) == (0, 2)
    assert ro.history_range(TrainConfig(rollout_blocks=10), context_blocks=6) == (0, 4)
    assert ro.history_range(TrainConfig(rollout_blocks=10, min_rollout_blocks=9), context_blocks=6) == (3, 4)
    assert RolloutConfig(history_blocks=3).history_range(TrainConfig(), context_blocks=6) == (3, 3)


@pytest.mark.parametrize("overrides, key", [
    (["train.rollout_blocks=5"], "train.rollout_blocks"),  # tiny context: 6 blocks
    (["train.min_rollout_blocks=5"], "train.min_rollout_blocks"),
    (["train.rollout_blocks=7", "train.min_rollout_blocks=8"], "train.min_rollout_blocks"),
    (["train.min_rollout_blocks=0"], "train.min_rollout_blocks"),
])
def test_bad_rollout_lengths_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config(Config, TINY, overrides)
    assert str(e.value).startswith(key), str(e.value)


@pytest.mark.parametrize("override, key", [
    ("rollouts.workers=-1", "rollouts.workers"),
    ("rollouts.workers=1.5", "rollouts.workers"),
    ("rollouts.cpus_per_worker=-0.5", "rollouts.cpus_per_worker"),
    ("rollouts.gpus_per_worker=-1", "rollouts.gpus_per_worker"),
    ("rollouts.queue_size=0", "rollouts.queue_size"),
    ("rollouts.publish_every=0", "rollouts.publish_every"),
    ("rollouts.max_staleness=-1", "rollouts.max_staleness"),
    ("rollouts.history_blocks=-1", "rollouts.history_blocks"),
    ("rollouts.max_replacements=-2", "rollouts.max_replacements"),
    ("rollouts.get_timeout_s=0", "rollouts.get_timeout_s"),
    ("rollouts.qeue_size=3", "rollouts.qeue_size"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(Config, TINY, [override])
    assert str(e.value).startswith(key), str(e.value)


def test_a_worker_needs_some_resources():
    with pytest.raises(ConfigError, match="^rollouts.cpus_per_worker"):
        load_config(Config, TINY, ["rollouts.cpus_per_worker=0", "rollouts.gpus_per_worker=0"])
    assert load_config(Config, TINY, ["rollouts.cpus_per_worker=0", "rollouts.gpus_per_worker=1"]).rollouts.gpus_per_worker == 1
