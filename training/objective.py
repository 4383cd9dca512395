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
from data.prompt_set import PromptLoader, embed_prompt_source, prompt_dir
from pipeline import attention
from pipeline.config import ConfigError, tokens_per_frame
from pipeline.networks.checkpoints import check_export_model, load_weights
from pipeline.networks.text_encoders import build_text_encoder, clear_text_encoder_cache
from pipeline.networks.wan_dit import TextCond, WanDiT, build_dit
from pipeline.schedule import denoising_levels

from .dist import all_true, barrier
from .ema import EMA
from .engines import build_engine
from .roles import check_roles
from .teacher_shard import shard_frozen


class NonFiniteLoss(RuntimeError):
    pass


class Objective:
    """Shared plumbing: config, device, per-rank noise generator, data, frozen networks, engines."""

    engine_names: tuple[str, ...] = ("generator",)

    def __init__(self, cfg, device: torch.device, dtype: torch.dtype, rank: int, world: int, run_dir: Path):
        self.cfg, self.device, self.dtype, self.rank, self.world = cfg, device, dtype, rank, world
        attention.configure(cfg.runtime.attention)
        self.run_dir = Path(run_dir)
        s = cfg.stream
        self.levels = denoising_levels(s.denoising_steps, s.shift, s.num_train_timesteps, s.warp_denoising_steps)
        self.tokens_per_frame = tokens_per_frame(cfg.model, cfg.video, cfg.codec)
        self.noise = torch.Generator(device=device).manual_seed(cfg.train.seed * 1000 + rank)
        self.loader = self._loader()
        self._batches = iter(self.loader)
        self.engines: dict = {}
        self.ema: EMA | None = None
        self.roles = check_roles(cfg)  # student / teacher / critic shapes

    # ------------------------------------------------------------------ helpers
    def _loader(self):
        """Latent shards (data.latents), or prompt embeddings alone (data.prompts: ode_init, distill)."""
        cfg = self.cfg
        if not cfg.data.prompts:
            return ShardLoader(latent_urls(cfg.data.latents), self.rank, self.world, num_workers=0,
                               seed=cfg.data.seed, shuffle_buffer=cfg.data.shuffle_buffer, decode=latent_decoder(),
                               batch_size=cfg.train.batch_size)
        if cfg.train.stage == "teacher":
            raise ConfigError("data.prompts: the teacher stage learns from videos (data.latents); prompt-only "
                              "data feeds ode_init and distill")
        cache = self.run_dir / "prompts"
        if self.rank == 0:  # embedded once, by one process; the others read it
            embed_prompt_source(cfg.data.prompts, cfg.text, cache, self.device)
        barrier()
        return PromptLoader(prompt_dir(cfg.data.prompts, cache), self.rank, self.world, cfg.data.seed,
                            cfg.train.batch_size)

    def new_dit(self, weights: str | None, trainable: bool, role: str = "student", device=None) -> WanDiT:
        """`role`'s network (training.roles) on `device` (default: the run's), loaded from `weights`."""
        model_cfg = self.roles[role]
        if weights:
            check_export_model(weights, model_cfg, "model" if role == "student" else f"{role}_model")
        if weights and not trainable:
            # Frozen: built on the meta device and given the file's tensors, so no fp32 copy of a 14B
            # teacher (57 GB) is ever made; cast straight from the file's dtype to the run's.
            model = build_dit(model_cfg, "meta")
            load_weights(model, weights, assign=True)
            return model.to(device or self.device, self.dtype).eval().requires_grad_(False)
        model = build_dit(model_cfg, device or self.device, torch.float32, seed=self.cfg.train.seed)
        if weights:
            load_weights(model, weights)
        model.gradient_checkpointing = trainable and self.cfg.train.activation_checkpointing
        if not trainable:
            model = model.to(self.dtype).eval().requires_grad_(False)
        return model

    def frozen_teacher(self) -> WanDiT:
        if not self.cfg.train.teacher:
            raise ValueError(f"train.teacher: {self.cfg.train.stage} needs the teacher's weights "
                             "(an export dir or .safetensors)")
        if not self.cfg.train.teacher_shard:
            return self.new_dit(self.cfg.train.teacher, trainable=False, role="teacher")
        # Built and loaded on the CPU, then partitioned: no GPU ever holds the whole teacher.
        model = self.new_dit(self.cfg.train.teacher, trainable=False, role="teacher", device="cpu")
        return shard_frozen(model, self.cfg.train, self.dtype)

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

    def negative_text(self) -> Tensor:
        """[1, L, D] text states of sampler.negative_prompt (CFG's unconditional branch).

        A umT5-XXL encoder (about 10.6 GiB in bf16) is released right after: training reads
        precomputed text states, so keeping it would cost every GPU that memory for nothing."""
        emb = build_text_encoder(self.cfg.text, self.device).encode([self.cfg.sampler.negative_prompt])
        if self.cfg.text.kind == "umt5":
            clear_text_encoder_cache()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return emb

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
