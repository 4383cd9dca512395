"""The DMD step against the reference's: critic samples, EMA cadence, rollout lengths, first frame, batches.

Logic tests of `training.distill.DistillObjective` in one process: the networks are the real tiny
WanDiT, the DeepSpeed engine and the latent-shard loader are replaced by minimal stand-ins (the
2-process DeepSpeed path runs in tests/integration/test_train.py).
"""

import math
from collections import Counter
from pathlib import Path

import pytest
import torch

import training.distill as distill_mod
import training.objective as objective_mod
from infra.config import load_config
from infra.schema import Config
from pipeline.networks.checkpoints import save_weights
from pipeline.networks.wan_dit import build_dit
from training.distill import DistillObjective
from training.ema import EMA
from training.first_frame import image_latent

TINY = Path(__file__).resolve().parents[2] / "configs/tiny.yaml"


class StandInEngine(torch.nn.Module):
    """The engine interface the objective uses: module, forward, backward, step, zero_grad."""

    def __init__(self, model, optim, train, dtype):
        super().__init__()
        self.module = model
        self.opt = torch.optim.SGD(model.parameters(), lr=optim.lr)

    def forward(self, *a, **kw):
        return self.module(*a, **kw)

    def backward(self, loss):
        loss.backward()

    def step(self):
        self.opt.step()
        self.opt.zero_grad()

    def zero_grad(self):
        self.opt.zero_grad()


class PromptLoader:
    """Batches of distinct random text states [B, L, D] (what latent shards hold for distill)."""

    def __init__(self, urls, rank, world, batch_size=1, **kw):
        self.batch, self.gen, self.seen = batch_size, torch.Generator().manual_seed(rank), []

    def __iter__(self):
        while True:
            text = torch.randn(self.batch, 32, 384, generator=self.gen)
            self.seen.append(text)
            yield {"text": text}

    def state_dict(self):
        return {}


def make(tmp_path, monkeypatch, *over):
    monkeypatch.setattr(objective_mod, "build_engine", StandInEngine)
    monkeypatch.setattr(objective_mod, "ShardLoader", PromptLoader)
    monkeypatch.setattr(objective_mod, "latent_urls", lambda d: [])
    cfg = load_config(Config, TINY, ["train.stage=distill", "train.guidance_scale=1.0", *over])
    teacher = save_weights(build_dit(cfg.model, seed=1, zero_head=False), tmp_path / "teacher.safetensors")
    cfg.train.teacher = str(teacher)
    return DistillObjective(cfg, torch.device("cpu"), torch.float32, 0, 1, tmp_path)


class Calls:
    """Records every rollout (kind, length, with_grad, sample, finals) and loss input."""

    def __init__(self, monkeypatch, fake=False):
        self.rollouts, self.critic, self.dmd = [], [], []
        for name in ("rolling_rollout", "self_forcing_rollout"):
            real = getattr(distill_mod, name)

            def wrapped(model, text, levels, shape, num_blocks, score, choice, _real=real, _name=name, **kw):
                if fake:
                    x0 = torch.randn(shape[0], score * shape[1], *shape[2:], requires_grad=kw["with_grad"])
                    out = (x0, torch.randn(shape[0], num_blocks * shape[1], *shape[2:]))
                else:
                    out = _real(model, text, levels, shape, num_blocks, score, choice, **kw)
                self.rollouts.append({"kind": _name, "blocks": num_blocks, "with_grad": kw["with_grad"],
                                      "choice": choice, "batch": shape[0], "sample": out[0], "finals": out[1]})
                return out

            monkeypatch.setattr(distill_mod, name, wrapped)
        real_flow, real_dmd = distill_mod.flow_matching_loss, distill_mod.dmd_loss

        def flow(model, x0, text, t, eps, T=1000):
            self.critic.append({"x0": x0, "t": t})
            return real_flow(model, x0, text, t, eps, T)

        def dmd(teacher, critic, x0, cond, uncond, t, eps, g, T=1000, frame_mask=None, **kw):
            self.dmd.append({"x0": x0, "t": t, "mask": frame_mask, "uncond": uncond,
                             "interval": kw.get("guidance_interval")})
            return real_dmd(teacher, critic, x0, cond, uncond, t, eps, g, T, frame_mask=frame_mask, **kw)

        monkeypatch.setattr(distill_mod, "flow_matching_loss", flow)
        monkeypatch.setattr(distill_mod, "dmd_loss", dmd)


@pytest.mark.parametrize("p_sf", [0.0, 1.0], ids=["rolling", "self_forcing"])
def test_critic_trains_on_a_fresh_no_grad_rollout_built_like_the_dmd_sample(tmp_path, monkeypatch, p_sf):
    obj = make(tmp_path, monkeypatch, f"train.p_self_forcing={p_sf}", "train.critic_updates_per_generator=2")
    calls = Calls(monkeypatch)
    obj.train_step(1)  # critic only: one rollout, without gradient
    obj.train_step(2)  # generator step: its own rollout with gradient, then a fresh one for the critic
    assert [(r["with_grad"]) for r in calls.rollouts] == [False, True, False]
    critic_rollouts = [calls.rollouts[0], calls.rollouts[2]]
    for r, c in zip(critic_rollouts, calls.critic):
        assert c["x0"] is r["sample"] or torch.equal(c["x0"], r["sample"])  # the recorded DMD sample
        assert not r["sample"].requires_grad
    assert calls.dmd[0]["x0"] is calls.rollouts[1]["sample"] and calls.rollouts[1]["sample"].requires_grad
    loader = obj.loader
    assert len(loader.seen) == 3 and not torch.equal(loader.seen[1], loader.seen[2])  # its own prompt
    if p_sf == 0.0:  # a mixture of levels: the fully denoised final blocks would be a different sample
        r = calls.rollouts[0]
        assert not torch.allclose(r["sample"], r["finals"][:, -r["sample"].shape[1]:], atol=1e-4)


@pytest.mark.parametrize("kind", ["rolling", "self_forcing"])
def test_no_grad_and_grad_rollouts_record_the_same_blocks_at_the_same_levels(tmp_path, monkeypatch, kind):
    """Same prompts, noise and choices: the critic's construction equals the generator's exactly."""
    import random

    obj = make(tmp_path, monkeypatch, f"train.p_self_forcing={1.0 if kind == 'self_forcing' else 0.0}")
    out = []
    for with_grad in (True, False):
        random.seed(5)
        obj.noise.manual_seed(11)
        obj.loader.gen.manual_seed(3)
        obj._batches = iter(obj.loader)
        out.append(obj._rollout(1, with_grad=with_grad, first=True, times={"data": 0, "rollout": 0}))
    g, c = out
    assert g.x0.requires_grad and not c.x0.requires_grad and g.blocks == c.blocks
    assert torch.allclose(g.x0.detach(), c.x0, atol=1e-6)


def test_rollout_lengths_and_kinds_follow_the_reference(tmp_path, monkeypatch):
    obj = make(tmp_path, monkeypatch, "train.p_self_forcing=0.5")
    calls = Calls(monkeypatch, fake=True)
    for step in range(1, 301):
        obj._rollout(step, with_grad=False, first=True, times={"data": 0, "rollout": 0})
    lengths = Counter(r["blocks"] for r in calls.rollouts)
    assert set(lengths) == {6, 7, 8}  # context 6 blocks (18 frames): 18, 21, 24 frames as 21, 24, 27 for Wan
    assert all(70 <= n <= 130 for n in lengths.values()), lengths
    kinds = Counter(r["kind"] for r in calls.rollouts)
    assert 110 <= kinds["self_forcing_rollout"] <= 190, kinds
    choices = Counter((r["kind"], r["choice"]) for r in calls.rollouts)
    assert {c for _, c in choices} == {0, 1, 2, 3}  # offsets / exit steps over all K steps


def test_fixed_length_and_critic_timesteps_clamped_like_the_dmd_timesteps(tmp_path, monkeypatch):
    obj = make(tmp_path, monkeypatch, "train.rollout_blocks=7", "train.min_rollout_blocks=7",
               "train.critic_updates_per_generator=1", "train.dmd_min_t=100", "train.dmd_max_t=900")
    calls = Calls(monkeypatch, fake=True)
    for step in range(1, 41):  # 80 draws of t; with shift 5 about a third land above 900
        obj.train_step(step)
    assert {r["blocks"] for r in calls.rollouts} == {7}
    t = torch.cat([c["t"] for c in calls.critic] + [d["t"] for d in calls.dmd])
    assert t.min() >= 100 and t.max() <= 900 and (t == 900).any()  # shift 5 puts many draws above 900


def test_ema_moves_only_on_generator_steps(tmp_path, monkeypatch):
    obj = make(tmp_path, monkeypatch, "train.critic_updates_per_generator=3", "train.ema_start=0",
               "train.ema_decay=0.5")
    ema = obj.ema
    assert isinstance(ema, EMA)
    # from step 3 on the EMA lags the weights, so an update on a critic-only step (4, 5) would show
    for step in range(1, 7):
        before = {k: v.clone() for k, v in ema.shadow.items()}
        logs = obj.train_step(step)
        if obj.ema_due(logs):
            ema.update(step)
        moved = any(not torch.equal(before[k], v) for k, v in ema.shadow.items())
        assert moved == (step % 3 == 0), step  # the trainer's rule: update iff ema_due
        assert obj.ema_due(logs) == (step % 3 == 0)


def test_training_without_the_sink_rolls_past_the_context(tmp_path, monkeypatch):
    # the ablation's no_sink student (stream.sink_blocks=0): 8-block rollouts of both kinds evict the
    # first blocks with nothing kept, and both losses stay finite
    for p_sf in ("0.0", "1.0"):
        obj = make(tmp_path, monkeypatch, "stream.sink_blocks=0", "train.rollout_blocks=8", "train.min_rollout_blocks=8",
                   "train.critic_updates_per_generator=1", f"train.p_self_forcing={p_sf}")
        assert obj.rule.sink_blocks == 0
        logs = obj.train_step(1)
        assert logs["rollout/blocks"] == 8 and math.isfinite(logs["loss/generator"]) and math.isfinite(logs["loss/critic"])


def test_a_run_too_short_for_one_generator_step_says_so(tmp_path, monkeypatch, caplog):
    # the count agrees with train_step's rule (the generator steps when step % ratio == 0, steps from 1)
    for steps, ratio in ((200, 5), (4, 5), (5, 5), (7, 2), (1, 1)):
        assert distill_mod.generator_steps(steps, ratio) == sum(s % ratio == 0 for s in range(1, steps + 1))
    # with a critic warm-up the generator waits: its first step is warmup + ratio
    for steps, ratio, warmup in ((300, 5, 100), (104, 5, 100), (105, 5, 100), (10, 2, 3), (3, 1, 7)):
        flags = [distill_mod.is_generator_step(s, ratio, warmup) for s in range(1, steps + 1)]
        assert distill_mod.generator_steps(steps, ratio, warmup) == sum(flags)
        assert not any(flags[:warmup + ratio - 1]) and (steps < warmup + ratio or flags[warmup + ratio - 1])
    with caplog.at_level("WARNING", logger="rollforge.train"):
        make(tmp_path, monkeypatch, "train.max_steps=4", "train.critic_updates_per_generator=5")
    assert "no generator step" in caplog.text and "train.max_steps=4" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rollforge.train"):
        make(tmp_path, monkeypatch, "train.max_steps=5", "train.critic_updates_per_generator=5")
    assert "no generator step" not in caplog.text
    with caplog.at_level("WARNING", logger="rollforge.train"):  # the warm-up alone can use up the run
        make(tmp_path, monkeypatch, "train.max_steps=6", "train.critic_updates_per_generator=5",
             "train.critic_warmup_steps=2")
    assert "no generator step" in caplog.text and "train.critic_warmup_steps=2" in caplog.text


def test_batch_of_two_prompts_goes_through_rollout_and_both_losses(tmp_path, monkeypatch):
    obj = make(tmp_path, monkeypatch, "train.batch_size=2", "train.critic_updates_per_generator=1",
               "train.guidance_scale=2.0", "sampler.guidance_interval=[0,0.7]")
    calls = Calls(monkeypatch)
    logs = obj.train_step(1)
    assert calls.dmd[0]["interval"] == (0.0, 0.7)  # the real score is guided in the sampler's interval
    assert [r["batch"] for r in calls.rollouts] == [2, 2]
    assert calls.dmd[0]["x0"].shape[0] == 2 and calls.dmd[0]["t"].shape == (2,)
    assert calls.dmd[0]["uncond"].k[0].shape[0] == 2  # the negative prompt broadcast to the batch
    assert calls.critic[0]["x0"].shape[0] == 2 and calls.critic[0]["t"].shape == (2,)
    a, b = calls.rollouts[0]["sample"].detach()
    assert not torch.allclose(a, b, atol=1e-4)  # two prompts (and noises), two different samples
    seen = obj.loader.seen[0]
    assert seen.shape[0] == 2 and not torch.equal(seen[0], seen[1])
    assert logs["stepped/generator"] and logs["tokens"] > 0


WAN_VAE = ["codec.kind=wan_vae", "codec.spatial_factor=8", "codec.temporal_factor=4", "codec.vae_dim=8",
           "codec.z_dim=4", "model.in_dim=4", "model.out_dim=4"]


@pytest.mark.parametrize("blocks", [6, 7])
def test_first_scored_latent_becomes_an_image_latent_with_the_wan_vae(tmp_path, monkeypatch, blocks):
    obj = make(tmp_path, monkeypatch, *WAN_VAE, f"train.rollout_blocks={blocks}", f"train.min_rollout_blocks={blocks}",
               "train.critic_updates_per_generator=1", "train.p_self_forcing=0.0")
    calls = Calls(monkeypatch)
    obj.train_step(1)
    gen, critic_rollout = calls.rollouts
    dmd, crit = calls.dmd[0], calls.critic[0]
    if blocks == 6:  # the rollout is the context: its first block is the video's start, nothing to do
        assert dmd["mask"] is None and torch.equal(dmd["x0"], gen["sample"])
        return
    fpb = 3
    assert dmd["mask"].tolist() == [False] * fpb + [True] * (6 * fpb - fpb)
    clip = torch.cat([gen["finals"][:, :fpb], gen["sample"][:, :1].detach()], 1)  # the block before + latent 0
    assert torch.allclose(dmd["x0"][:, :1], image_latent(obj.codec, clip), atol=1e-6)
    assert not torch.allclose(dmd["x0"][:, :1], gen["sample"][:, :1].detach(), atol=1e-3)
    assert torch.equal(dmd["x0"][:, 1:], gen["sample"][:, 1:]) and dmd["x0"].requires_grad
    # the critic trains on the same construction, its first latent re-encoded too
    clip = torch.cat([critic_rollout["finals"][:, :fpb], critic_rollout["sample"][:, :1]], 1)
    assert torch.allclose(crit["x0"][:, :1], image_latent(obj.codec, clip), atol=1e-6)


def test_pixel_codec_never_masks(tmp_path, monkeypatch):
    obj = make(tmp_path, monkeypatch, "train.rollout_blocks=8", "train.min_rollout_blocks=8",
               "train.critic_updates_per_generator=1")
    calls = Calls(monkeypatch, fake=True)
    obj.train_step(1)
    assert calls.dmd[0]["mask"] is None and calls.dmd[0]["x0"] is calls.rollouts[0]["sample"]
