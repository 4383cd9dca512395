"""Training objectives: DMD gradient by hand, flow matching, timestep sampling, CFG scores, ODE regression."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.networks.wan_dit import build_dit
from pipeline.schedule import add_noise, denoising_levels, flow_to_x0
from training.losses import (
    causal_x0,
    dmd_generator_loss,
    dmd_loss,
    dmd_scores,
    drop_text,
    flow_matching_loss,
    ode_inputs,
    ode_regression_loss,
    per_block_steps,
    sample_timesteps,
)

TPF = 4  # tokens per latent frame: 4x4 latent, patch (1, 2, 2)


@pytest.fixture
def model(micro_cfg):
    return build_dit(micro_cfg, seed=0, zero_head=False)


@pytest.fixture
def text(model):
    with torch.no_grad():
        return model.encode_text(torch.randn(1, 5, 8))


class ExactFlow(nn.Module):
    """Predicts the exact flow eps - x0 of captured tensors, whatever its input."""

    def __init__(self, x0, eps):
        super().__init__()
        self.x0, self.eps = x0, eps

    def forward(self, x, t, text, **kw):
        return self.eps - self.x0


class Recorder(nn.Module):
    """Wraps a model and records (x, t, text) of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x, t, text, **kw):
        self.calls.append((x.clone(), t.clone(), text))
        return self.inner(x, t, text, **kw)


# ----------------------------------------------------------------------------------------- DMD
def test_dmd_gradient_equals_hand_computation():
    x = torch.linspace(-1.0, 1.3, 24, dtype=torch.float64).reshape(2, 3, 1, 2, 2).requires_grad_(True)
    real = (torch.arange(24, dtype=torch.float64).reshape(2, 3, 1, 2, 2) % 5) * 0.1 - 0.2
    fake = torch.cos(torch.arange(24, dtype=torch.float64)).reshape(2, 3, 1, 2, 2)
    loss, logs = dmd_generator_loss(x, real, fake)
    loss.backward()
    # by hand, per sample b: n_b = mean over 12 elements of |x_b - real_b|
    grad = torch.empty_like(real)
    for b in range(2):
        n_b = sum(abs(float(x.detach()[b].flatten()[i]) - float(real[b].flatten()[i])) for i in range(12)) / 12
        grad[b] = (fake[b] - real[b]) / n_b
    assert torch.allclose(x.grad, grad / 24, rtol=0, atol=1e-12)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.5 * float((grad**2).mean()), rel=1e-6)
    assert logs["dmd_gradient_norm"].item() == pytest.approx(float(grad.abs().mean()), rel=1e-6)


def test_dmd_frame_mask_averages_over_the_kept_frames_and_normalises_over_all():
    """The reference's gradient mask (first block of a re-encoded sample): the loss is the mean over
    the kept frames, the per-sample normaliser still spans every frame."""
    x = torch.linspace(-1.0, 1.3, 24, dtype=torch.float64).reshape(2, 3, 1, 2, 2).requires_grad_(True)
    real = (torch.arange(24, dtype=torch.float64).reshape(2, 3, 1, 2, 2) % 5) * 0.1 - 0.2
    fake = torch.cos(torch.arange(24, dtype=torch.float64)).reshape(2, 3, 1, 2, 2)
    mask = torch.tensor([False, True, True])
    loss, _ = dmd_generator_loss(x, real, fake, frame_mask=mask)
    loss.backward()
    norm = (x.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    grad = (fake - real) / norm
    assert torch.equal(x.grad[:, 0], torch.zeros_like(x.grad[:, 0]))
    assert torch.allclose(x.grad[:, 1:], grad[:, 1:] / 16, rtol=0, atol=1e-12)  # 2 samples x 2 frames x 4
    assert loss.item() == pytest.approx(0.5 * float((grad[:, 1:] ** 2).mean()), rel=1e-6)
    with pytest.raises(ValueError, match="frame_mask"):
        dmd_generator_loss(x, real, fake, frame_mask=torch.zeros(3, dtype=torch.bool))


def test_dmd_gradient_is_per_sample_and_zero_normaliser_is_safe():
    x = torch.zeros(2, 3, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    real = torch.cat([torch.full((1, 3, 1, 2, 2), 2.0), torch.zeros(1, 3, 1, 2, 2)]).double()
    fake = torch.ones(2, 3, 1, 2, 2, dtype=torch.float64)
    loss, _ = dmd_generator_loss(x, real, fake)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.allclose(x.grad[0], torch.full_like(x.grad[0], (1 - 2) / 2 / 24), atol=1e-15)
    assert torch.equal(x.grad[1], torch.zeros_like(x.grad[1]))  # |x - real| == 0: no direction


def test_dmd_scores_guidance_one_skips_uncond(model, text):
    teacher, critic = Recorder(model), Recorder(build_dit(model.cfg, seed=1, zero_head=False))
    x0_hat = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    eps, t = torch.randn(2, 3, 4, 4, 4), torch.tensor([300.0, 700.0])
    text2 = type(text)([k.expand(2, -1, -1, -1) for k in text.k], [v.expand(2, -1, -1, -1) for v in text.v])
    real, fake = dmd_scores(teacher, critic, x0_hat, text2, None, t, eps, guidance_scale=1.0)
    assert len(teacher.calls) == 1 and len(critic.calls) == 1
    assert teacher.calls[0][1].shape == (2,)  # one timestep per sample
    x_t = add_noise(x0_hat.detach(), eps, t)
    with torch.no_grad():
        assert torch.allclose(real, flow_to_x0(model(x_t, t, text2), x_t, t), atol=1e-6)
        assert torch.allclose(fake, flow_to_x0(critic.inner(x_t, t, text2), x_t, t), atol=1e-6)
    assert not real.requires_grad and not fake.requires_grad
    with pytest.raises(ValueError):
        dmd_scores(teacher, critic, x0_hat, text2, None, t, eps, guidance_scale=3.0)


def test_dmd_scores_cfg_matches_manual(model, text):
    critic = build_dit(model.cfg, seed=1, zero_head=False)
    with torch.no_grad():
        uncond = model.encode_text(torch.zeros(1, 1, 8))
    x0_hat, eps, t, g = torch.randn(1, 3, 4, 4, 4), torch.randn(1, 3, 4, 4, 4), torch.tensor([550.0]), 4.0
    real, fake = dmd_scores(model, critic, x0_hat, text, uncond, t, eps, guidance_scale=g)
    with torch.no_grad():
        x_t = add_noise(x0_hat, eps, t)
        v_c, v_u = model(x_t, t, text), model(x_t, t, uncond)
        assert (v_c - v_u).abs().max() > 1e-3  # CFG is not a no-op here
        want = x_t.double() - 0.55 * (v_u + g * (v_c - v_u)).double()
    assert torch.allclose(real.double(), want, atol=1e-5)
    assert not torch.allclose(real, flow_to_x0(v_c, x_t, t), atol=1e-3)
    assert torch.allclose(fake, flow_to_x0(critic(x_t, t, text), x_t, t), atol=1e-6)
    loss, logs = dmd_loss(model, critic, x0_hat.requires_grad_(True), text, uncond, t, eps, g)
    assert torch.isfinite(loss) and logs["dmd_gradient_norm"] > 0


# ----------------------------------------------------------------------------------------- flow matching
@pytest.mark.parametrize("per_frame", [False, True])
def test_flow_matching_zero_for_exact_flow(text, per_frame):
    x0, eps = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    t = torch.tensor([[100.0, 500.0, 900.0]] * 2) if per_frame else torch.tensor([250.0, 750.0])
    assert flow_matching_loss(ExactFlow(x0, eps), x0, text, t, eps).item() == 0.0
    wrong = flow_matching_loss(ExactFlow(x0, torch.zeros_like(eps)), x0, text, t, eps)
    assert wrong.item() == pytest.approx(float((eps**2).mean()), rel=1e-5)


def test_flow_matching_equals_manual_mse_and_overfits(model, text):
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(1, 3, 4, 4, 4, generator=g), torch.randn(1, 3, 4, 4, 4, generator=g)
    t = torch.tensor([400.0])
    loss0 = flow_matching_loss(model, x0, text, t, eps)
    with torch.no_grad():
        manual = F.mse_loss(model(add_noise(x0, eps, t), t, text), eps - x0)
    assert loss0.item() == pytest.approx(manual.item(), rel=1e-6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        loss = flow_matching_loss(model, x0, text, t, eps)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * loss0.item()


# ----------------------------------------------------------------------------------------- timesteps
def test_sample_timesteps_clamped_and_shifted():
    t5 = sample_timesteps(4000, torch.Generator().manual_seed(0), shift=5.0, min_t=20.0, max_t=980.0)
    t1 = sample_timesteps(4000, torch.Generator().manual_seed(0), shift=1.0, min_t=20.0, max_t=980.0)
    assert t5.shape == (4000,) and t5.dtype == torch.float32
    for t in (t5, t1):
        assert t.min() >= 20.0 and t.max() <= 980.0
    assert t1.mean() == pytest.approx(500.0, abs=20.0)
    assert t5.mean() > t1.mean() + 150.0  # E[5u / (1 + 4u)] ~ 0.74
    assert (t5 == 980.0).any() and (t5 == 20.0).any()  # the clamp is active at both ends
    assert torch.equal(t5, sample_timesteps(4000, torch.Generator().manual_seed(0), 5.0, min_t=20.0, max_t=980.0))


def test_per_block_steps_uniform():
    s = per_block_steps(4000, 4, torch.Generator().manual_seed(0))
    assert s.shape == (4000,) and s.dtype == torch.long
    counts = torch.bincount(s, minlength=4)
    assert len(counts) == 4 and counts.min() > 900  # all levels used, about equally


# ----------------------------------------------------------------------------------------- ODE regression
def test_ode_inputs_pick_each_blocks_level():
    levels = denoising_levels([1000, 750, 500, 250], 5.0)
    x_levels = torch.arange(4.0).view(1, 4, 1, 1, 1, 1).expand(2, 4, 6, 2, 2, 2).clone()
    x_t, t = ode_inputs(x_levels, levels, torch.tensor([[3, 1], [0, 2]]), frames_per_block=3)
    assert x_t.shape == (2, 6, 2, 2, 2)
    assert x_t[:, :, 0, 0, 0].tolist() == [[3, 3, 3, 1, 1, 1], [0, 0, 0, 2, 2, 2]]
    assert torch.equal(t, levels[torch.tensor([[3, 3, 3, 1, 1, 1], [0, 0, 0, 2, 2, 2]])].float())


def test_ode_regression_is_block_causal(model, text):
    x_t, x0 = torch.randn(1, 6, 4, 4, 4), torch.randn(1, 6, 4, 4, 4)
    t = torch.tensor([[900.0] * 3 + [500.0] * 3])
    x_t2, t2 = x_t.clone(), t.clone()
    x_t2[:, 3:] = torch.randn(1, 3, 4, 4, 4)
    t2[:, 3:] = 200.0
    with torch.no_grad():
        a = causal_x0(model, x_t, t, text, 3, TPF)
        b = causal_x0(model, x_t2, t2, text, 3, TPF)
        full_a, full_b = model(x_t, t, text), model(x_t2, t2, text)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)  # block 0 does not see block 1
    assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-3
    assert (full_a[:, :3] - full_b[:, :3]).abs().max() > 1e-4  # without the mask it would
    loss = ode_regression_loss(model, x_t, t, x0, text, 3, TPF)
    assert loss.item() == pytest.approx(F.mse_loss(a, x0).item(), rel=1e-5)


def test_ode_regression_loss_decreases(model, text):
    g = torch.Generator().manual_seed(5)
    x_t, x0 = torch.randn(1, 6, 4, 4, 4, generator=g), torch.randn(1, 6, 4, 4, 4, generator=g)
    t = torch.tensor([[952.4] * 3 + [769.2] * 3])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = ode_regression_loss(model, x_t, t, x0, text, 3, TPF)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0]


def test_drop_text_replaces_rows_at_rate_and_zero_draws_nothing():
    emb = torch.randn(2000, 4, 8)
    null = torch.zeros(1, 4, 8)
    g = torch.Generator().manual_seed(0)
    out = drop_text(emb, null, 0.25, g)
    dropped = (out == 0).all(dim=(1, 2))
    kept = (out == emb).all(dim=(1, 2))
    assert bool((dropped | kept).all())  # whole rows: a caption is replaced entirely or kept
    assert abs(dropped.float().mean().item() - 0.25) < 0.04
    state = g.get_state()
    assert drop_text(emb, null, 0.0, g) is emb
    assert torch.equal(g.get_state(), state)  # p = 0 leaves the random stream (and a run) unchanged
    with pytest.raises(ValueError, match="does not match"):
        drop_text(emb, torch.zeros(1, 5, 8), 0.1, g)
