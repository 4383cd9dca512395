"""Objectives: each owns its networks, engines and data, and runs one optimizer step -> logs.

    teacher   flow matching of the bidirectional DiT on latent shards (pre-train / fine-tune)
    ode_init  the causal student regresses onto teacher few-step ODE trajectories (block-causal)
    distill   DMD: real score = frozen teacher with CFG, fake score = critic (flow loss on detached
              student samples); Rolling Forcing rollouts with gradient in the non-overlapping windows
              of one offset, mixed with Self-Forcing rollouts with probability p_self_forcing;
              critic every step, generator every `critic_updates_per_generator` steps.

Random choices that must agree across ranks (window offset, exit step, rollout kind) come from
rank 0 (`broadcast_int`); noise comes from per-rank generators, saved in the trainer state.

With rollout workers (`rollouts.workers > 0`, infra/rollout_workers.py) distill takes each step's
prompt and self-generated history from the installed `HistorySource` and rolls out only the scored
continuation; rank 0 publishes the generator's weights every `rollouts.publish_every` steps.
ode_init then trains on the pairs the teacher-rollout workers wrote (training/ode_parts.py).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from torch import Tensor

from data.loader import ShardLoader, latent_decoder, latent_urls
from pipeline.config import tokens_per_frame
from pipeline.networks.checkpoints import check_export_model, load_weights
from pipeline.networks.text_encoders import build_text_encoder
from pipeline.networks.wan_dit import TextCond, WanDiT, build_dit
from pipeline.schedule import denoising_levels

from .dist import all_true, broadcast_int
from .ema import EMA
from .engines import build_engine
from .history import HistoryFeed, history_source
from .losses import dmd_loss, drop_text, flow_matching_loss, ode_inputs, ode_regression_loss, per_block_steps, sample_timesteps
from .ode import load_pairs, make_ode_pairs, save_pairs
from .ode_parts import load_pair_parts
from .publish import PublishSchedule, full_weights
from .rollouts import rolling_rollout, self_forcing_rollout


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

    def state_dict(self) -> dict:
        return {"noise": self.noise.get_state(), "loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.noise.set_state(state["noise"])
        self.loader.load_state_dict(state["loader"])
        self._batches = iter(self.loader)

    def tokens(self, frames: int, batch: int) -> int:
        return frames * batch * self.tokens_per_frame


class TeacherObjective(Objective):
    """min E ||v_theta(x_t, t, c) - (eps - x0)||^2 over latent shards (bidirectional, t per sample)."""

    def __init__(self, *a):
        super().__init__(*a)
        self.wrap("generator", self.new_dit(self.cfg.model.weights, trainable=True), self.cfg.train.generator)
        self.ema = EMA(self.engines["generator"].module, self.cfg.train.ema_decay, self.cfg.train.ema_start)
        self.null_text = None
        if self.cfg.train.text_dropout > 0:
            self.null_text = build_text_encoder(self.cfg.text, self.device).encode([self.cfg.sampler.negative_prompt])

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
        self.wrap("generator", self.new_dit(tr.init_from or tr.teacher, trainable=True), tr.generator)
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
        if path.is_file():
            return load_pairs(path)
        count = -(-self.cfg.train.ode_pairs // self.world)
        s, sc = self.cfg.stream, self.cfg.sampler
        uncond = None
        if self.cfg.train.guidance_scale != 1.0:
            uncond = self.text_cond(self.teacher, build_text_encoder(self.cfg.text, self.device)
                                    .encode([sc.negative_prompt]))
        texts, embs = [], []
        while len(texts) < count:
            emb = self.next_batch()["text"][:1]
            embs.append(emb[0])
            texts.append((self.text_cond(self.teacher, emb), uncond))
        shape = (s.context_frames, self.cfg.codec.latent_channels, *self.latent_hw)
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.train.seed * 7919 + self.rank)
        pairs = [dict(p, text=e.cpu()) for p, e in zip(
            make_ode_pairs(self.teacher, texts, shape, self.levels, self.cfg.train.ode_teacher_steps, s.shift,
                           self.cfg.train.guidance_scale, gen, self.device, self.dtype), embs)]
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


class DistillObjective(Objective):
    """Rolling Forcing DMD with a critic; see the module docstring."""

    engine_names = ("generator", "critic")

    def __init__(self, *a):
        super().__init__(*a)
        tr = self.cfg.train
        self.teacher = self.frozen_teacher()
        self.wrap("generator", self.new_dit(tr.init_from or tr.teacher, trainable=True), tr.generator)
        self.wrap("critic", self.new_dit(tr.teacher, trainable=True), tr.critic)
        self.ema = EMA(self.engines["generator"].module, tr.ema_decay, tr.ema_start)
        s = self.cfg.stream
        self.score_blocks = s.context_blocks
        self.num_blocks = tr.rollout_blocks or 2 * s.context_blocks
        if self.num_blocks < self.score_blocks:
            raise ValueError(f"train.rollout_blocks: {self.num_blocks} < the {self.score_blocks} scored blocks")
        self.feed: HistoryFeed | None = None
        if self.cfg.rollouts.workers > 0:
            # Workers make the history; the learner rolls out only the scored continuation.
            self.feed = HistoryFeed(history_source(), self.cfg.rollouts.max_staleness)
            self.num_blocks = self.score_blocks
            self.publisher = PublishSchedule(self.cfg.rollouts.publish_every)
            self._publish(0)  # workers start on the initial weights while the trainer sets up
        # The negative prompt and the teacher are fixed: encode its CFG conditioning once.
        self.uncond = None
        if tr.guidance_scale != 1.0:
            emb = build_text_encoder(self.cfg.text, self.device).encode([self.cfg.sampler.negative_prompt])
            with torch.no_grad():
                self.uncond = self.text_cond(self.teacher, emb)

    def train_step(self, step: int) -> dict:
        tr, s = self.cfg.train, self.cfg.stream
        gen_eng, critic = self.engines["generator"], self.engines["critic"]
        t0 = time.perf_counter()
        history, rollout_logs = None, {}
        if self.feed is None:
            emb = self.next_batch()["text"][:1]
        else:
            history, rollout_logs = self._history(step)
            emb = history.text[:1].to(self.device)
        t1 = time.perf_counter()
        train_generator = step % tr.critic_updates_per_generator == 0
        self_forcing = broadcast_int(int(random.random() < tr.p_self_forcing))
        block_shape = (1, s.frames_per_block, self.cfg.codec.latent_channels, *self.latent_hw)
        logs: dict = {"rollout/self_forcing": self_forcing, **rollout_logs}
        with torch.set_grad_enabled(train_generator):
            text = self.text_cond(gen_eng.module, emb)
        common = dict(sink_blocks=s.sink_blocks, context_blocks=s.context_blocks, generator=self.noise,
                      num_train_timesteps=s.num_train_timesteps, history=history)
        score = self.score_blocks if train_generator else 0
        if self_forcing:
            exit_step = broadcast_int(random.randrange(len(self.levels)))
            sample, finals = self_forcing_rollout(gen_eng, text, self.levels, block_shape, self.num_blocks, score,
                                                  exit_step, **common)
        else:
            offset = broadcast_int(random.randrange(len(self.levels)))
            sample, finals = rolling_rollout(gen_eng, text, self.levels, block_shape, self.num_blocks, score,
                                             offset, **common)
        t2 = time.perf_counter()
        scored = finals[:, -self.score_blocks * s.frames_per_block:]
        teacher_text = self.text_cond(self.teacher, emb)
        if train_generator:
            t = sample_timesteps(1, self.noise, s.shift, s.num_train_timesteps, tr.dmd_min_t, tr.dmd_max_t, self.device)
            with torch.no_grad():
                critic_text = self.text_cond(critic.module, emb)
            loss, dmd_logs = dmd_loss(self.teacher, _Frozen(critic, critic_text), sample, teacher_text,
                                      self.uncond, t, self.randn(sample.shape), tr.guidance_scale, s.num_train_timesteps)
            logs.update({"loss/generator": loss.item(), "stepped/generator": self.optimize("generator", loss),
                         **{f"dmd/{k}": float(v) for k, v in dmd_logs.items()}})
        t = sample_timesteps(1, self.noise, s.shift, s.num_train_timesteps, device=self.device)
        closs = flow_matching_loss(critic, scored.detach(), self.text_cond(critic.module, emb), t,
                                   self.randn(scored.shape), s.num_train_timesteps)
        logs.update({"loss/critic": closs.item(), "stepped/critic": self.optimize("critic", closs)})
        t3 = time.perf_counter()
        logs.update({"loss": logs.get("loss/generator", closs.item()), "stepped": logs["stepped/critic"],
                     "time/data": t1 - t0, "time/rollout": t2 - t1, "time/compute": t3 - t2,
                     "tokens": self.tokens(self.num_blocks * s.frames_per_block, 1)})
        return logs

    # ------------------------------------------------------------------ rollout workers
    def _publish(self, done: int) -> None:
        """Every rank gathers (a collective under ZeRO-3); rank 0 hands the weights to the workers."""
        weights = full_weights(self.engines["generator"].module)
        if self.rank == 0:
            self.feed.source.publish(self.publisher.version(done), weights)
        self.publisher.mark(done)

    def _history(self, step: int):
        """Publish if due, then the next fresh history at the current version (step - 1 steps done)."""
        done, start = step - 1, time.perf_counter()
        if self.publisher.due(done):
            self._publish(done)
        published = time.perf_counter()
        history, logs = self.feed.next(self.publisher.version(done))
        return history, {**logs, "rollout/publish_s": published - start}

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.feed is not None:
            state["rollouts"] = {"dropped_stale": self.feed.dropped_stale}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.feed is not None and "rollouts" in state:
            self.feed.dropped_stale = int(state["rollouts"]["dropped_stale"])


class _Frozen(torch.nn.Module):
    """The critic as a fixed scorer: its own text conditioning, no gradient (DMD's fake score)."""

    def __init__(self, engine, text: TextCond):
        super().__init__()
        self.engine, self.text = engine, text

    def forward(self, x: Tensor, t: Tensor, _text: TextCond, **kw) -> Tensor:
        with torch.no_grad():
            return self.engine(x, t, self.text, **kw)


OBJECTIVES = {"teacher": TeacherObjective, "ode_init": OdeInitObjective, "distill": DistillObjective}


def build_objective(cfg, device: torch.device, dtype: torch.dtype, rank: int, world: int, run_dir: Path) -> Objective:
    if cfg.train.stage not in OBJECTIVES:
        raise ValueError(f"unknown stage {cfg.train.stage!r}; valid: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[cfg.train.stage](cfg, device, dtype, rank, world, run_dir)
