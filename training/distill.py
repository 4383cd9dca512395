"""DMD distillation of the causal student over self-generated rollouts (the reference's step, exactly).

One iteration (TencentARC/RollingForcing `trainer/distillation.py` + `model/dmd.py`):

    if step % critic_updates_per_generator == 0:          # generator step
        prompts A -> rollout WITH gradient -> sample x̂0 (+ first-frame handling, loss mask)
        t ~ shift(U[0, T)), clamped to [dmd_min_t, dmd_max_t]
        real = teacher x0 with CFG, fake = critic x0, at x_t = noise(x̂0, eps, t)
        L_G = 0.5 mean_M (x̂0 - sg(x̂0 - (fake - real) / mean|x̂0 - real|))^2 ; step the generator
        the EMA moves (only here)
    prompts B -> a fresh rollout WITHOUT gradient -> sample x̃0, built exactly like x̂0
    L_C = flow-matching loss of the critic on sg(x̃0) at a fresh t clamped like the DMD t ; step the critic

A *rollout*: kind Self-Forcing with probability p_self_forcing (block-AR, one exit step for all
blocks), else Rolling Forcing (rolling windows, gradient windows of one offset); its length is drawn
uniformly from [min_rollout_blocks, rollout_blocks] (default: context, +1, +2 blocks) and its last
`context` blocks are scored (training/rollouts.py). Every choice is drawn on rank 0 and broadcast;
noise comes from the per-rank generator. When the rollout is longer than the context and the codec's
first latent is an image (the Wan VAE), the sample's first latent is re-encoded from its last pixel
frame and the first block is masked out of L_G (training/first_frame.py).

A batch holds `train.batch_size` prompts, one per sample, through the rollout and both losses.
With rollout workers each sample's prompt and history come from the installed `HistorySource`:
the learner draws one history length for all ranks, cuts its histories to it, primes its cache
and rolls out only the scored continuation; rank 0 publishes the generator's weights every
`rollouts.publish_every` steps.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from pipeline.networks.codecs import build_codec
from pipeline.networks.wan_dit import TextCond
from pipeline.windows import ContextRule

from .dist import broadcast_int
from .ema import EMA
from .first_frame import first_block_mask, replace_first_latent
from .history import History, HistoryFeed, history_source
from .losses import dmd_loss, flow_matching_loss, sample_timesteps
from .objective import Objective
from .publish import PublishSchedule, full_weights
from .roles import critic_init, student_init
from .rollouts import rolling_rollout, self_forcing_rollout

log = logging.getLogger("rollforge.train")


def is_generator_step(step: int, critic_updates_per_generator: int, critic_warmup_steps: int = 0) -> bool:
    """Steps count from 1; after `critic_warmup_steps` critic-only steps the generator steps on every
    `critic_updates_per_generator`-th (the critic on all)."""
    k = step - critic_warmup_steps
    return k > 0 and k % critic_updates_per_generator == 0


def generator_steps(max_steps: int, critic_updates_per_generator: int, critic_warmup_steps: int = 0) -> int:
    """Generator updates in steps 1..max_steps (`is_generator_step` counted in closed form)."""
    return max(0, max_steps - critic_warmup_steps) // critic_updates_per_generator


@dataclass
class Sample:
    """One rollout's DMD sample.

    x0:     [B, context*fpb, C, H, W] the scored blocks' recorded x0 (with gradient for the generator)
    mask:   bool [context*fpb] frames the generator loss counts (None: all)
    emb:    [B, L, D] the prompts' text-encoder states
    blocks: the rollout's length in blocks (history included)
    tokens: latent tokens the learner pushed through the student
    """

    x0: Tensor
    mask: Tensor | None
    emb: Tensor
    blocks: int
    tokens: int
    logs: dict


class DistillObjective(Objective):
    """Rolling Forcing DMD with a critic; see the module docstring."""

    engine_names = ("generator", "critic")

    def __init__(self, *a):
        super().__init__(*a)
        tr, s = self.cfg.train, self.cfg.stream
        self.teacher = self.frozen_teacher()
        self.wrap("generator", self.new_dit(student_init(self.cfg, self.roles), trainable=True), tr.generator)
        self.wrap("critic", self.new_dit(critic_init(self.cfg, self.roles), trainable=True, role="critic"), tr.critic)
        self.ema = EMA(self.engines["generator"].module, tr.ema_decay, tr.ema_start)
        if self.rank == 0 and generator_steps(tr.max_steps, tr.critic_updates_per_generator, tr.critic_warmup_steps) == 0:
            log.warning("train.max_steps=%d < train.critic_warmup_steps=%d + train.critic_updates_per_generator=%d: "
                        "no generator step, only the critic trains and the exported student equals its init",
                        tr.max_steps, tr.critic_warmup_steps, tr.critic_updates_per_generator)
        self.rule = ContextRule.from_stream(s)
        self.score_blocks = s.context_blocks
        self.lengths = tr.rollout_range(s.context_blocks)
        self.codec = build_codec(self.cfg.codec).to(self.device).eval()
        self.feed: HistoryFeed | None = None
        if self.cfg.rollouts.workers > 0:
            # Workers make the histories; the learner rolls out only the scored continuation.
            self.feed = HistoryFeed(history_source(), self.cfg.rollouts.max_staleness)
            self.history_lengths = self.cfg.rollouts.history_range(tr, s.context_blocks)
            self.publisher = PublishSchedule(self.cfg.rollouts.publish_every)
            self._publish(0)  # workers start on the initial weights while the trainer sets up
        # The negative prompt and the teacher are fixed: encode its CFG conditioning once.
        self.uncond = None
        if tr.guidance_scale != 1.0:
            emb = self.negative_text()
            with torch.no_grad():
                self.uncond = self.text_cond(self.teacher, emb)

    def ema_due(self, logs: dict) -> bool:
        """The exported student is the EMA of generator updates: it moves only on generator steps."""
        return bool(logs.get("stepped/generator", False))

    # ------------------------------------------------------------------ one iteration
    def train_step(self, step: int) -> dict:
        tr, s = self.cfg.train, self.cfg.stream
        critic = self.engines["critic"]
        logs: dict = {}
        times = {"data": 0.0, "rollout": 0.0, "compute": 0.0}
        tokens = 0
        train_generator = is_generator_step(step, tr.critic_updates_per_generator, tr.critic_warmup_steps)
        if train_generator:
            g = self._rollout(step, with_grad=True, first=True, times=times)
            t0 = time.perf_counter()
            batch = g.x0.shape[0]
            t = sample_timesteps(batch, self.noise, s.shift, s.num_train_timesteps, tr.dmd_min_t, tr.dmd_max_t,
                                 self.device)
            with torch.no_grad():
                critic_text = self.text_cond(critic.module, g.emb)
                teacher_text = self.text_cond(self.teacher, g.emb)
            loss, dmd_logs = dmd_loss(self.teacher, _Frozen(critic, critic_text), g.x0, teacher_text,
                                      _batch(self.uncond, batch), t, self.randn(g.x0.shape), tr.guidance_scale,
                                      s.num_train_timesteps, frame_mask=g.mask,
                                      guidance_interval=self.cfg.sampler.guidance_interval)
            logs.update({"loss/generator": loss.item(), "stepped/generator": self.optimize("generator", loss),
                         **{f"dmd/{k}": float(v) for k, v in dmd_logs.items()},
                         **{f"rollout/generator_{k.split('/', 1)[1]}": v for k, v in g.logs.items()
                            if k in ("rollout/self_forcing", "rollout/blocks")}})
            tokens += g.tokens
            times["compute"] += time.perf_counter() - t0
        c = self._rollout(step, with_grad=False, first=not train_generator, times=times)
        t0 = time.perf_counter()
        batch = c.x0.shape[0]
        t = sample_timesteps(batch, self.noise, s.shift, s.num_train_timesteps, tr.dmd_min_t, tr.dmd_max_t,
                             self.device)
        closs = flow_matching_loss(critic, c.x0.detach(), self.text_cond(critic.module, c.emb), t,
                                   self.randn(c.x0.shape), s.num_train_timesteps)
        logs.update(c.logs)
        logs.update({"loss/critic": closs.item(), "stepped/critic": self.optimize("critic", closs)})
        tokens += c.tokens
        times["compute"] += time.perf_counter() - t0
        logs.update({"loss": logs.get("loss/generator", closs.item()), "stepped": logs["stepped/critic"],
                     **{f"time/{k}": v for k, v in times.items()}, "tokens": tokens})
        return logs

    # ------------------------------------------------------------------ rollouts
    def _rollout(self, step: int, with_grad: bool, first: bool, times: dict) -> Sample:
        """Prompts (or histories) -> one rollout of drawn kind and length -> its DMD sample."""
        s = self.cfg.stream
        t0 = time.perf_counter()
        emb, history, logs = self._inputs(step, first)
        t1 = time.perf_counter()
        start = 0 if history is None else history.num_blocks
        num_blocks = self.score_blocks if history is not None else broadcast_int(random.randint(*self.lengths))
        self_forcing = broadcast_int(int(random.random() < self.cfg.train.p_self_forcing))
        gen_eng = self.engines["generator"]
        block_shape = (emb.shape[0], s.frames_per_block, self.cfg.codec.latent_channels, *self.latent_hw)
        with torch.set_grad_enabled(with_grad):
            text = self.text_cond(gen_eng.module, emb)
        common = dict(rule=self.rule, generator=self.noise, num_train_timesteps=s.num_train_timesteps,
                      history=history, with_grad=with_grad)
        if self_forcing:
            exit_step = broadcast_int(random.randrange(len(self.levels)))
            x0, finals = self_forcing_rollout(gen_eng, text, self.levels, block_shape, num_blocks, self.score_blocks,
                                              exit_step, **common)
        else:
            offset = broadcast_int(random.randrange(len(self.levels)))
            x0, finals = rolling_rollout(gen_eng, text, self.levels, block_shape, num_blocks, self.score_blocks,
                                         offset, **common)
        mask = None
        if start + num_blocks > self.score_blocks and self.codec.first_latent_is_image:
            if history is None:  # the generated blocks before the scored window
                before = finals[:, :(num_blocks - self.score_blocks) * s.frames_per_block]
            else:  # the learner generated only the window: the history's last kept blocks precede it
                before = history.tail().to(self.device, x0.dtype)
            x0 = replace_first_latent(self.codec, before, x0)
            mask = first_block_mask(x0.shape[1], s.frames_per_block, self.device)
        times["data"] += t1 - t0
        times["rollout"] += time.perf_counter() - t1
        logs.update({"rollout/self_forcing": self_forcing, "rollout/blocks": start + num_blocks})
        return Sample(x0=x0, mask=mask, emb=emb, blocks=start + num_blocks, logs=logs,
                      tokens=self.tokens(num_blocks * s.frames_per_block, emb.shape[0]))

    def _inputs(self, step: int, first: bool) -> tuple[Tensor, History | None, dict]:
        """(text states [B, L, D], a batched history cut to one drawn length or None, logs): from the
        latent shards, or from the rollout workers (publishing first when due, once per step)."""
        if self.feed is None:
            return self.next_batch()["text"], None, {}
        logs: dict = {}
        done, start = step - 1, time.perf_counter()
        if first and self.publisher.due(done):
            self._publish(done)
        if first:
            logs["rollout/publish_s"] = time.perf_counter() - start
        histories = []
        for _ in range(self.cfg.train.batch_size):
            history, feed_logs = self.feed.next(self.publisher.version(done))
            histories.append(history)
            logs.update(feed_logs)
        length = broadcast_int(random.randint(*self.history_lengths))
        history = History.stack([h.cut(length, self.rule) for h in histories])
        return history.text.to(self.device), history, logs

    # ------------------------------------------------------------------ rollout workers
    def _publish(self, done: int) -> None:
        """Every rank gathers (a collective under ZeRO-3); rank 0 hands the weights to the workers."""
        weights = full_weights(self.engines["generator"].module)
        if self.rank == 0:
            self.feed.source.publish(self.publisher.version(done), weights)
        self.publisher.mark(done)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.feed is not None:
            state["rollouts"] = {"dropped_stale": self.feed.dropped_stale}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.feed is not None and "rollouts" in state:
            self.feed.dropped_stale = int(state["rollouts"]["dropped_stale"])


def _batch(cond: TextCond | None, batch: int) -> TextCond | None:
    """A one-prompt conditioning (the fixed negative prompt) broadcast to `batch` samples."""
    if cond is None or cond.k[0].shape[0] == batch:
        return cond
    return TextCond(k=[k.expand(batch, *k.shape[1:]) for k in cond.k], v=[v.expand(batch, *v.shape[1:]) for v in cond.v])


class _Frozen(torch.nn.Module):
    """The critic as a fixed scorer: its own text conditioning, no gradient (DMD's fake score)."""

    def __init__(self, engine, text: TextCond):
        super().__init__()
        self.engine, self.text = engine, text

    def forward(self, x: Tensor, t: Tensor, _text: TextCond, **kw) -> Tensor:
        with torch.no_grad():
            return self.engine(x, t, self.text, **kw)
