"""Objectives: each owns its networks, engines and data, and runs one optimizer step -> logs.

    teacher   flow matching of the bidirectional DiT on latent shards (pre-train / fine-tune)
    ode_init  the causal student regresses onto teacher few-step ODE trajectories (block-causal)
    distill   DMD with a critic over Rolling Forcing / Self-Forcing rollouts (training/distill.py)

The shared plumbing is `training.objective.Objective`. With rollout workers (`rollouts.workers > 0`,
infra/rollout_workers.py) ode_init trains on the pairs the teacher-rollout workers wrote
(training/ode_parts.py).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from .dist import all_true
from .distill import DistillObjective
from .ema import EMA
from .losses import drop_text, flow_matching_loss, ode_inputs, ode_regression_loss, per_block_steps, sample_timesteps
from .objective import NonFiniteLoss, Objective
from .ode import load_pairs, make_ode_pairs, save_pairs
from .ode_parts import load_pair_parts
from .roles import student_init

__all__ = ["NonFiniteLoss", "OBJECTIVES", "Objective", "build_objective"]


class TeacherObjective(Objective):
    """min E ||v_theta(x_t, t, c) - (eps - x0)||^2 over latent shards (bidirectional, t per sample)."""

    def __init__(self, *a):
        super().__init__(*a)
        self.wrap("generator", self.new_dit(self.cfg.model.weights, trainable=True), self.cfg.train.generator)
        self.ema = EMA(self.engines["generator"].module, self.cfg.train.ema_decay, self.cfg.train.ema_start)
        self.null_text = None
        if self.cfg.train.text_dropout > 0:
            self.null_text = self.negative_text()

    def train_step(self, step: int) -> dict:
        eng, t0 = self.engines["generator"], time.perf_counter()
        batch = self.next_batch()
        x0 = batch["latent"].to(self.dtype)
        t1 = time.perf_counter()
        t = sample_timesteps(x0.shape[0], self.noise, self.cfg.stream.shift, device=self.device)
        text = drop_text(batch["text"], self.null_text, self.cfg.train.text_dropout, self.noise)
        loss = flow_matching_loss(eng, x0, self.text_cond(eng.module, text), t, self.randn(x0.shape))
        ok = self.optimize("generator", loss)
        t2 = time.perf_counter()
        return {"loss": loss.item(), "stepped": ok, "time/data": t1 - t0, "time/compute": t2 - t1,
                "tokens": self.tokens(x0.shape[1], x0.shape[0])}


class OdeInitObjective(Objective):
    """Regress the causal student onto teacher ODE pairs; each block at its own random level."""

    def __init__(self, *a):
        super().__init__(*a)
        tr = self.cfg.train
        self.teacher = self.frozen_teacher()
        self.pairs = self._pairs()
        self.wrap("generator", self.new_dit(student_init(self.cfg, self.roles), trainable=True), tr.generator)
        self.ema = EMA(self.engines["generator"].module, tr.ema_decay, tr.ema_start)
        self.order = random.Random(tr.seed + self.rank)

    def _pairs(self) -> list[dict]:
        """All pairs the teacher-rollout workers wrote, when they did; else this rank's share of
        `train.ode_pairs` trajectories, generated once and stored as a shard."""
        if self.cfg.rollouts.workers > 0:
            pairs = load_pair_parts(self.run_dir / "ode_pairs")
            if pairs is not None:
                return pairs
        path = self.run_dir / "ode_pairs" / f"pairs_rank{self.rank}_of{self.world}.safetensors"
        if all_true(path.is_file()):  # all or none: a sharded teacher's forwards are collectives
            return load_pairs(path)
        count = -(-self.cfg.train.ode_pairs // self.world)
        s = self.cfg.stream
        uncond = None
        if self.cfg.train.guidance_scale != 1.0:
            uncond = self.text_cond(self.teacher, self.negative_text())
        texts, embs = [], []
        while len(texts) < count:
            emb = self.next_batch()["text"][:1]
            embs.append(emb[0])
            texts.append((self.text_cond(self.teacher, emb), uncond))
        shape = (s.context_frames, self.cfg.codec.latent_channels, *self.latent_hw)
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed * 7919 + self.rank)
        pairs = [dict(p, text=e.cpu()) for p, e in zip(
            make_ode_pairs(self.teacher, texts, shape, self.levels, self.cfg.train.ode_teacher_steps, s.shift,
                           self.cfg.train.guidance_scale, gen, self.device, self.dtype, s.num_train_timesteps,
                           self.cfg.sampler.guidance_interval), embs)]
        path.parent.mkdir(parents=True, exist_ok=True)
        save_pairs(pairs, path)
        return load_pairs(path)

    def train_step(self, step: int) -> dict:
        eng, t0 = self.engines["generator"], time.perf_counter()
        picks = [self.pairs[self.order.randrange(len(self.pairs))] for _ in range(self.cfg.train.batch_size)]
        x_levels = torch.stack([p["x_levels"] for p in picks]).transpose(0, 1).to(self.device, self.dtype)
        x0 = torch.stack([p["x0"] for p in picks]).to(self.device, self.dtype)
        text = torch.stack([p["text"] for p in picks])
        fpb = self.cfg.stream.frames_per_block
        steps = per_block_steps(x0.shape[1] // fpb, len(self.levels), self.noise)
        x_t, t = ode_inputs(x_levels.transpose(0, 1), self.levels, steps, fpb)
        t1 = time.perf_counter()
        loss = ode_regression_loss(eng, x_t, t, x0, self.text_cond(eng.module, text), fpb, self.tokens_per_frame)
        ok = self.optimize("generator", loss)
        return {"loss": loss.item(), "stepped": ok, "time/data": t1 - t0, "time/compute": time.perf_counter() - t1,
                "tokens": self.tokens(x0.shape[1], x0.shape[0])}


OBJECTIVES = {"teacher": TeacherObjective, "ode_init": OdeInitObjective, "distill": DistillObjective}


def build_objective(cfg, device: torch.device, dtype: torch.dtype, rank: int, world: int, run_dir: Path) -> Objective:
    if cfg.train.stage not in OBJECTIVES:
        raise ValueError(f"unknown stage {cfg.train.stage!r}; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[cfg.train.stage](cfg, device, dtype, rank, world, run_dir)
