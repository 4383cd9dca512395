"""The objective interface: config, device, per-rank noise generator, data, frozen networks, engines.

An objective owns its networks and data and runs one optimizer step per `train_step(step) -> logs`
(training/objectives.py for teacher and ode_init, training/distill.py for DMD); the trainer loop
(training/trainer.py) alternates, guards, logs and checkpoints. Random choices that must agree
across ranks (window offset, exit step, rollout kind and length) come from rank 0
(`broadcast_int`); noise comes from per-rank generators, saved in the trainer state.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from data.loader import ShardLoader, latent_decoder, latent_urls
from pipeline.config import tokens_per_frame
from pipeline.networks.checkpoints import check_export_model, load_weights
from pipeline.networks.wan_dit import TextCond, WanDiT, build_dit
from pipeline.schedule import denoising_levels

from .dist import all_true
from .ema import EMA
from .engines import build_engine


class NonFiniteLoss(RuntimeError):
    pass


class Objective:
    """Shared plumbing: config, device, per-rank noise generator, data, frozen networks, engines."""

    engine_names: tuple[str, ...] = ("generator",)

    def __init__(self, cfg, device: torch.device, dtype: torch.dtype, rank: int, world: int, run_dir: Path):
        self.cfg, self.device, self.dtype, self.rank, self.world = cfg, device, dtype, rank, world
        self.run_dir = Path(run_dir)
        s = cfg.stream
        self.levels = denoising_levels(s.denoising_steps, s.shift, s.num_train_timesteps, s.warp_denoising_steps)
        self.tokens_per_frame = tokens_per_frame(cfg.model, cfg.video, cfg.codec)
        self.noise = torch.Generator(device=device).manual_seed(cfg.train.seed * 1000 + rank)
        self.loader = ShardLoader(latent_urls(cfg.data.latents), rank, world, num_workers=0, seed=cfg.data.seed,
                                  shuffle_buffer=cfg.data.shuffle_buffer, decode=latent_decoder(),
                                  batch_size=cfg.train.batch_size)
        self._batches = iter(self.loader)
        self.engines: dict = {}
        self.ema: EMA | None = None

    # ------------------------------------------------------------------ helpers
    def new_dit(self, weights: str | None, trainable: bool) -> WanDiT:
        model = build_dit(self.cfg.model, self.device, torch.float32, seed=self.cfg.train.seed)
        if weights:
            check_export_model(weights, self.cfg.model)
            load_weights(model, weights)
        model.gradient_checkpointing = trainable and self.cfg.train.activation_checkpointing
        if not trainable:
            model = model.to(self.dtype).eval().requires_grad_(False)
        return model

    def frozen_teacher(self) -> WanDiT:
        if not self.cfg.train.teacher:
            raise ValueError(f"train.teacher: {self.cfg.train.stage} needs the teacher's weights "
                             "(an export dir or .safetensors)")
        return self.new_dit(self.cfg.train.teacher, trainable=False)

    @property
    def latent_hw(self) -> tuple[int, int]:
        v, c = self.cfg.video, self.cfg.codec
        return v.height // c.spatial_factor, v.width // c.spatial_factor

    def wrap(self, name: str, model: WanDiT, optim) -> None:
        self.engines[name] = build_engine(model, optim, self.cfg.train, self.dtype)

    def next_batch(self) -> dict:
        batch = next(self._batches)
        return {k: (v.to(self.device) if isinstance(v, Tensor) else v) for k, v in batch.items()}

    def randn(self, shape) -> Tensor:
        return torch.randn(shape, generator=self.noise, device=self.device, dtype=self.dtype)

    def text_cond(self, model, emb: Tensor) -> TextCond:
        return model.encode_text(emb.to(self.device, self.dtype))

    def optimize(self, name: str, loss: Tensor) -> bool:
        """backward + step on every rank, or skip on every rank when any rank's loss is not finite."""
        if not all_true(bool(torch.isfinite(loss.detach()).all())):
            self.engines[name].zero_grad()
            return False
        self.engines[name].backward(loss)
        self.engines[name].step()
        return True

    def ema_due(self, logs: dict) -> bool:
        """Whether this step moved the weights the EMA follows (every stepped step by default)."""
        return bool(logs.get("stepped", True))

    def state_dict(self) -> dict:
        return {"noise": self.noise.get_state(), "loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.noise.set_state(state["noise"])
        self.loader.load_state_dict(state["loader"])
        self._batches = iter(self.loader)

    def tokens(self, frames: int, batch: int) -> int:
        return frames * batch * self.tokens_per_frame
