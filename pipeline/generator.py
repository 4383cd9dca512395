"""StreamingGenerator: prompt(s) in, decoded video frames out, block by block as they finish.

    gen = StreamingGenerator(cfg)                       # random weights (seeded) unless weights given
    for frames in gen.stream_video(PromptSchedule.single("a red ball"), seconds=10):
        writer.write(frames)                            # uint8 [n, H, W, 3]

A checkpoint directory holds `model.safetensors` (Wan key layout) and optionally `config.json`
with the model section it was trained with (checked against the configured model).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import attention
from .config import ConfigError, GeneratorConfig
from .networks.checkpoints import check_export_model, load_weights
from .networks.codecs import build_codec
from .networks.text_encoders import build_text_encoder
from .networks.wan_dit import TextCond, build_dit
from .reference import RecomputeBackend
from .samplers import STREAMING_SAMPLERS, bidirectional
from .schedule import denoising_levels
from .streaming import CachedBackend
from .video_io import to_uint8_frames
from .windows import ContextRule

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


@dataclass(frozen=True)
class PromptSchedule:
    """Prompts with start times in seconds, sorted; the first starts at 0."""

    entries: tuple[tuple[float, str], ...]

    @staticmethod
    def single(prompt: str) -> PromptSchedule:
        return PromptSchedule(((0.0, prompt),))

    @staticmethod
    def from_entries(entries: list[tuple[float, str]]) -> PromptSchedule:
        if not entries:
            raise ValueError("a prompt schedule needs at least one prompt")
        entries = sorted((float(t), str(p)) for t, p in entries)
        if entries[0][0] != 0.0:
            raise ValueError(f"the first prompt must start at 0 s, not {entries[0][0]} s")
        return PromptSchedule(tuple(entries))

    @staticmethod
    def from_file(path: str | Path) -> PromptSchedule:
        """YAML/JSON list of {at: seconds, prompt: text}, or JSONL with one such object per line."""
        import yaml

        path = Path(path)
        text = path.read_text()
        try:
            items = yaml.safe_load(text)
        except yaml.YAMLError:
            items = None
        if not isinstance(items, list):
            try:
                items = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not a YAML/JSON list nor JSONL of {{at, prompt}}: {e}") from None
        try:
            return PromptSchedule.from_entries([(float(it["at"]), str(it["prompt"])) for it in items])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: every entry needs 'at' (seconds) and 'prompt': {e}") from None


class StreamingGenerator:
    def __init__(self, cfg: GeneratorConfig, checkpoint: str | Path | None = None, text_encoder=None):
        """`text_encoder`: anything with `encode(prompts) -> [n, L, D]`; None builds cfg.text's."""
        cfg.validate()
        attention.configure(cfg.runtime.attention)
        self.cfg = cfg
        self.device = resolve_device(cfg.runtime.device)
        self.dtype = DTYPES[cfg.runtime.dtype]
        self.model = build_dit(cfg.model, self.device, self.dtype, seed=cfg.runtime.seed, zero_head=False).eval()
        weights = checkpoint or cfg.model.weights
        if checkpoint is not None:
            check_export_model(checkpoint, cfg.model)
        if weights:
            load_weights(self.model, weights)
        self.model.requires_grad_(False)
        self.codec = build_codec(cfg.codec).to(self.device).eval()
        self.text_encoder = text_encoder or build_text_encoder(cfg.text, self.device)
        s = cfg.stream
        self.levels = denoising_levels(s.denoising_steps, s.shift, s.num_train_timesteps, s.warp_denoising_steps)
        self._text_cache: dict[str, TextCond] = {}

    # ------------------------------------------------------------------ geometry
    @property
    def latent_block_shape(self) -> tuple[int, int, int, int, int]:
        c = self.cfg
        return (1, c.stream.frames_per_block, c.codec.latent_channels,
                c.video.height // c.codec.spatial_factor, c.video.width // c.codec.spatial_factor)

    def blocks_for_seconds(self, seconds: float) -> int:
        """Smallest number of blocks whose decoded video lasts at least `seconds`."""
        frames = max(1, math.ceil(seconds * self.cfg.video.fps))
        latent = 1
        while self.codec.video_frames(latent) < frames:
            latent += 1
        return math.ceil(latent / self.cfg.stream.frames_per_block)

    def block_at_second(self, seconds: float) -> int:
        """First block whose first decoded frame is at or after `seconds` (where a prompt switch lands)."""
        fpb, target = self.cfg.stream.frames_per_block, seconds * self.cfg.video.fps
        b = 0
        while (self.codec.video_frames(b * fpb) if b else 0) < target:
            b += 1
        return b

    # ------------------------------------------------------------------ text
    def text_cond(self, prompt: str) -> TextCond:
        if prompt not in self._text_cache:
            if len(self._text_cache) > 32:
                self._text_cache.clear()
            emb = self.text_encoder.encode([prompt]).to(self.device)
            self._text_cache[prompt] = self.model.encode_text(emb)
        return self._text_cache[prompt]

    # ------------------------------------------------------------------ streams
    def make_backend(self, sampler: str, prompt: str, recompute: bool = False):
        """The sampler's backend: every sampler uses one cache geometry and one context rule."""
        if sampler not in STREAMING_SAMPLERS:
            raise ValueError(f"no cached backend for sampler {sampler!r}; valid: {', '.join(STREAMING_SAMPLERS)}")
        s = self.cfg.stream
        rule = ContextRule.from_stream(s)
        text = self.text_cond(prompt)
        if recompute:
            return RecomputeBackend(self.model, text, rule, s.num_train_timesteps)
        return CachedBackend.build(self.model, text, rule, s.num_train_timesteps)

    @torch.no_grad()
    def stream_latents(self, schedule: PromptSchedule, num_blocks: int | None, sampler: str | None = None,
                       recompute: bool = False, seed: int | None = None, backend_out: list | None = None
                       ) -> Iterator[tuple[int, Tensor]]:
        """Yield (block index, clean latent [1, fpb, C, h, w]) as each block becomes final."""
        sampler = sampler or self.cfg.sampler.kind
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.runtime.seed if seed is None else seed)
        s = self.cfg.stream
        if sampler == "bidirectional":
            if len(schedule.entries) > 1:
                raise ValueError("the bidirectional teacher samples one clip: prompt schedules need rolling/block_ar")
            if num_blocks is None:
                raise ValueError("the bidirectional teacher needs a fixed length")
            sc = self.cfg.sampler
            uncond = self.text_cond(sc.negative_prompt) if sc.guidance_scale != 1.0 else None
            shape = (1, num_blocks * s.frames_per_block, *self.latent_block_shape[2:])
            yield from bidirectional(self.model, self.text_cond(schedule.entries[0][1]), uncond, shape,
                                     sc.teacher_steps, s.shift, sc.guidance_scale, gen, s.frames_per_block,
                                     self.device, self.dtype, s.num_train_timesteps,
                                     guidance_interval=sc.guidance_interval)
            return
        if sampler not in STREAMING_SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; valid: rolling, block_ar, bidirectional")
        backend = self.make_backend(sampler, schedule.entries[0][1], recompute)
        if backend_out is not None:
            backend_out.append(backend)
        switches = {self.block_at_second(t): p for t, p in schedule.entries[1:]}
        if switches and recompute:
            raise ValueError("prompt switching is not modelled by the recompute reference")
        for b, x0 in STREAMING_SAMPLERS[sampler](backend, self.levels, self.latent_block_shape, num_blocks, gen,
                                                 self.device, self.dtype, s.num_train_timesteps):
            yield b, x0
            if b + 1 in switches:
                backend.switch_text(self.text_cond(switches[b + 1]))

    @torch.no_grad()
    def stream_video(self, schedule: PromptSchedule, num_blocks: int | None, sampler: str | None = None,
                     **kwargs) -> Iterator[np.ndarray]:
        """Decode each finished block with the codec's streaming decoder: uint8 frames [n, H, W, 3]."""
        decoder = self.codec.stream_decoder()
        for _, latent in self.stream_latents(schedule, num_blocks, sampler, **kwargs):
            yield to_uint8_frames(decoder.decode(latent.to(self.dtype)))
