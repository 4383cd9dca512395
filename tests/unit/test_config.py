"""Config: defaults in dataclasses, YAML + overrides, strict types, cross-field rules naming the key."""

from pathlib import Path

import pytest
import yaml

from infra.config import apply_overrides, flatten, load_config, save_resolved, to_dict
from infra.schema import Config
from pipeline.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs/tiny.yaml"


def test_defaults_validate_and_equal_tiny_yaml():
    assert to_dict(load_config(Config)) == to_dict(load_config(Config, TINY))


def test_shipped_configs_load():
    wan = load_config(Config, REPO / "configs/wan2.1_t2v_1.3b.yaml")
    assert (wan.model.dim, wan.model.num_layers, wan.model.num_heads, wan.model.ffn_dim) == (1536, 30, 12, 8960)
    assert wan.stream.context_blocks == 7 and wan.stream.recent_blocks == 1
    from pipeline.config import tokens_per_frame

    assert tokens_per_frame(wan.model, wan.video, wan.codec) == 1560


def test_overrides_and_type_coercion():
    cfg = load_config(Config, TINY, ["stream.shift=3", "runtime.seed=7", "stream.denoising_steps=[1000,800,600,400]",
                                     "model.eps=1e-5", "model.weights=null", "model.patch_size=[1,2,2]"])
    assert cfg.stream.shift == 3.0 and isinstance(cfg.stream.shift, float)
    assert cfg.model.eps == 1e-5  # '1e-5' is a YAML string; coerced through the typed field
    assert cfg.model.patch_size == (1, 2, 2) and cfg.model.weights is None


BAD = [
    (["stream.window_blocks=3"], "stream.window_blocks"),  # window != denoising steps
    (["stream.sink_blocks=6"], "stream.sink_blocks"),  # sink >= context
    (["stream.context_frames=17"], "stream.context_frames"),  # not divisible by the block
    (["stream.context_frames=12"], "stream.context_frames"),  # too small for sink + window
    (["stream.denoising_steps=[500,750]", "stream.window_blocks=2"], "stream.denoising_steps"),
    (["model.dimm=3"], "model.dimm"),  # unknown key
    (["modell.dim=3"], "modell"),  # unknown section
    (["model.dim=abc"], "model.dim"),  # wrong type
    (["model.dim=3.5"], "model.dim"),
    (["model.qk_norm=3"], "model.qk_norm"),
    (["model.num_heads=3"], "model.num_heads"),  # dim not divisible
    (["model.in_dim=16"], "model.in_dim"),  # codec has 48 channels
    (["video.height=30"], "video.height"),  # not divisible by codec factor
    (["video.width=36"], "video.width"),  # latent width 9 not divisible by patch 2
    (["text.max_length=16"], "text.max_length"),  # != model.text_len
    (["model.text_dim=512"], "model.text_dim"),  # MiniLM is 384 wide
    (["codec.kind=vqgan"], "codec.kind"),
    (["sampler.kind=ddim"], "sampler.kind"),
    (["runtime.device=tpu"], "runtime.device"),
    (["model.patch_size=[1,2]"], "model.patch_size"),
    (["stream.frames_per_block=4"], "stream.context_frames"),  # 18 frames do not split into blocks of 4
    (["codec.kind=wan_vae"], "codec.spatial_factor"),
    (["text.kind=umt5"], "text.path"),
    (["train.text_dropout=1.0"], "train.text_dropout"),
    (["model.prediction=eps"], "model.prediction"),  # no caption would ever be seen
    (["stream.reference_compat=true", "stream.sink_blocks=2"], "stream.reference_compat"),  # its sink is 1 block
    (["train.generator.decay=step"], "train.generator.decay"),
    (["train.generator.decay=cosine"], "train.generator.decay_steps"),  # a decay needs a length
    (["train.critic.min_lr_ratio=2"], "train.critic.min_lr_ratio"),
    # numeric ranges (issue 14): each value below used to be accepted
    (["model.freq_dim=0"], "model.freq_dim"),
    (["model.eps=0"], "model.eps"),
    (["model.rope_theta=-1"], "model.rope_theta"),
    (["codec.z_dim=0"], "codec.z_dim"),
    (["runtime.seed=-1"], "runtime.seed"),
    (["data.seed=-1"], "data.seed"),
    (["train.seed=-1"], "train.seed"),
    (["train.ema_start=-1"], "train.ema_start"),
    (["train.critic_warmup_steps=-1"], "train.critic_warmup_steps"),
    (["train.guidance_scale=-1"], "train.guidance_scale"),
    (["train.generator.eps=0"], "train.generator.eps"),
    (["train.generator.lr=nan"], "train.generator.lr"),  # no float setting means anything at nan or inf
    (["sampler.guidance_scale=inf"], "sampler.guidance_scale"),
    (["run.evaluate.seconds=nan"], "run.evaluate.seconds"),
    (["run.evaluate.world_seed=-1"], "run.evaluate.world_seed"),
    (["run.evaluate.drift_sample_every=0"], "run.evaluate.drift_sample_every"),
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[b[1] + ":" + b[0][0] for b in BAD])
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(Config, TINY, overrides)
    assert str(err.value).startswith(key), str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(Config, tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Config, tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("model: {dim: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Config, tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["nonsense"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Config, TINY, ["stream.sink_blocks=2"])
    path = save_resolved(cfg, tmp_path)
    assert to_dict(load_config(Config, path)) == to_dict(cfg)
    assert yaml.safe_load(path.read_text())["stream"]["sink_blocks"] == 2
    assert flatten(to_dict(cfg))["stream.sink_blocks"] == 2


def test_clip_frames_derived_from_context_and_codec():
    assert load_config(Config, TINY).clip_frames == 18  # pixel codec, 18 context frames
    wan = load_config(Config, REPO / "configs/wan2.1_t2v_1.3b.yaml")
    assert wan.clip_frames == 81  # Wan: 21 latent frames <-> 81 video frames
    assert load_config(Config, TINY, ["data.clip_frames=30"]).clip_frames == 30
    with pytest.raises(ConfigError, match="data.crop"):
        load_config(Config, TINY, ["data.crop=diagonal"])
    with pytest.raises(ConfigError, match="ray.num_cpus"):
        load_config(Config, TINY, ["ray.num_cpus=0"])


def test_relative_paths_become_absolute_for_ray_learners(tmp_path):
    """Ray Train learners run elsewhere: paths that exist relative to the launch directory are made
    absolute; a hub id, an absolute path and a path that names nothing here are kept as given."""
    from infra.config_paths import absolute_paths

    (tmp_path / "models/teacher").mkdir(parents=True)
    (tmp_path / "lat").mkdir()
    cfg = load_config(Config, REPO / "configs/tiny.yaml",
                      ["model.weights=models/teacher", "data.latents=lat", "text.tokenizer=google/umt5-xxl",
                       "train.teacher=/abs/teacher", "data.shards=not/made/yet"])
    out = absolute_paths(cfg, tmp_path)
    assert out.model.weights == str(tmp_path / "models/teacher") and out.data.latents == str(tmp_path / "lat")
    assert out.text.tokenizer == "google/umt5-xxl" and out.train.teacher == "/abs/teacher"
    assert out.data.shards == "not/made/yet"
    assert cfg.model.weights == "models/teacher"  # the caller's config is not changed
