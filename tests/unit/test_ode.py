"""Teacher ODE trajectories hit the student's levels exactly; pairs round-trip through safetensors."""

import pytest
import torch
from torch import nn

from pipeline.networks.wan_dit import build_dit
from pipeline.samplers import bidirectional
from pipeline.schedule import add_noise, denoising_levels, euler_step, teacher_sigmas
from training.ode import load_pairs, make_ode_pairs, merged_sigmas, save_pairs, shard_metadata, teacher_trajectory

SHAPE = (1, 3, 4, 4, 4)


class Counting(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.n = inner, 0

    def forward(self, x, t, text, **kw):
        self.n += 1
        return self.inner(x, t, text, **kw)


class StraightLine(nn.Module):
    """The exact flow of one fixed (x0, eps) pair: v = eps - x0 everywhere."""

    def __init__(self, x0, eps):
        super().__init__()
        self.x0, self.eps = x0, eps

    def forward(self, x, t, text, **kw):
        return self.eps - self.x0


@pytest.fixture
def teacher(micro_cfg):
    return build_dit(micro_cfg, seed=0, zero_head=False).eval()


@pytest.fixture
def texts(teacher):
    with torch.no_grad():
        return teacher.encode_text(torch.randn(1, 5, 8)), teacher.encode_text(torch.zeros(1, 1, 8))


def test_trajectory_hits_every_level_exactly(teacher, texts):
    cond, uncond = texts
    levels = denoising_levels([1000, 750, 500, 250], 5.0)  # 500 coincides with a teacher sigma (6 steps)
    n, shift, g = 6, 5.0, 3.0
    noise = torch.randn(SHAPE)
    counted = Counting(teacher)
    x_levels, x0 = teacher_trajectory(counted, cond, uncond, noise, levels, n, shift, g)
    # independent plain Euler on the merged grid
    lev = (levels / 1000).tolist()
    grid = sorted(lev + [s for s in teacher_sigmas(n, shift).tolist() if min(abs(s - v) for v in lev) > 1e-9],
                  reverse=True)
    assert len(grid) == n + 1 + 2  # 750 and 250 are new points, 1000 and 500 are already on the grid
    states, x = {}, noise
    with torch.no_grad():
        for s, s_next in zip(grid[:-1], grid[1:]):
            states[s] = x
            t = torch.full((1,), s * 1000)
            v_c, v_u = teacher(x, t, cond), teacher(x, t, uncond)
            x = euler_step(x, v_u + g * (v_c - v_u), s, s_next)
    assert counted.n == 2 * (len(grid) - 1)
    assert x_levels.shape == (4, *SHAPE)
    assert torch.equal(x_levels[0], noise)
    for k, s in enumerate(lev):
        assert torch.allclose(x_levels[k], states[s], atol=1e-6), k
    assert torch.allclose(x0, x, atol=1e-6)
    assert not torch.allclose(x_levels[1], x_levels[2], atol=1e-3)


def test_trajectory_on_grid_levels_equals_bidirectional_sampler(teacher, texts):
    cond, uncond = texts
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(11))
    x_levels, x0 = teacher_trajectory(teacher, cond, uncond, noise, torch.tensor([1000.0], dtype=torch.float64),
                                      5, 5.0, 2.0)
    with torch.no_grad():
        ref = torch.cat([b for _, b in bidirectional(teacher, cond, uncond, SHAPE, 5, 5.0, 2.0,
                                                     torch.Generator().manual_seed(11), frames_per_block=3)], 1)
    assert torch.equal(x_levels[0], noise)
    assert torch.allclose(x0, ref, atol=1e-6)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_straight_line_flow_is_integrated_exactly(texts, guidance):
    x0, eps = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    levels = denoising_levels([1000, 800, 600, 400, 200], 5.0)
    x_levels, end = teacher_trajectory(StraightLine(x0, eps), texts[0], texts[1], eps, levels, 7, 5.0, guidance)
    for k, tau in enumerate(levels.tolist()):
        assert torch.allclose(x_levels[k], add_noise(x0, eps, tau), rtol=0, atol=1e-12), k
    assert torch.allclose(end, x0, rtol=0, atol=1e-12)


def test_merged_sigmas_validates_and_sorts():
    s = merged_sigmas(torch.tensor([1000.0, 300.0], dtype=torch.float64), 4, 3.0)
    assert s[0] == 1.0 and s[-1] == 0.0 and (s[1:] < s[:-1]).all() and (s == 0.3).any()
    near = 1000 * float(teacher_sigmas(4, 3.0)[2]) + 1e-10  # a level a hair off a teacher sigma
    s = merged_sigmas(torch.tensor([1000.0, near], dtype=torch.float64), 4, 3.0)
    assert len(s) == 5 and s[2] == near / 1000  # replaces it: no vanishing Euler step
    with pytest.raises(ValueError):
        merged_sigmas(torch.tensor([500.0, 800.0]), 4, 3.0)
    with pytest.raises(ValueError):
        merged_sigmas(torch.tensor([1200.0]), 4, 3.0)


def test_make_ode_pairs_and_save_load_round_trip(teacher, texts, tmp_path):
    cond, uncond = texts
    levels = denoising_levels([1000, 600, 300], 5.0)
    gen = torch.Generator().manual_seed(2)
    pairs = list(make_ode_pairs(teacher, [(cond, uncond), (cond, uncond)], SHAPE[1:], levels, 4, 5.0, 3.0, gen))
    assert len(pairs) == 2
    assert pairs[0]["x_levels"].shape == (3, *SHAPE[1:]) and pairs[0]["x0"].shape == SHAPE[1:]
    g2 = torch.Generator().manual_seed(2)
    assert torch.equal(pairs[0]["x_levels"][0], torch.randn(SHAPE, generator=g2)[0])  # level 1000 = the noise
    assert torch.equal(pairs[1]["x_levels"][0], torch.randn(SHAPE, generator=g2)[0])  # fresh noise per pair
    again = list(make_ode_pairs(teacher, [(cond, uncond)], SHAPE[1:], levels, 4, 5.0, 3.0,
                                torch.Generator().manual_seed(2)))
    assert torch.equal(again[0]["x0"], pairs[0]["x0"])  # deterministic given the generator

    path = tmp_path / "shards" / "ode-00000.safetensors"
    assert save_pairs(pairs, path, metadata={"levels": str(levels.tolist())}) == 2
    back = load_pairs(path)
    assert len(back) == 2
    for a, b in zip(pairs, back):
        assert torch.equal(a["x_levels"], b["x_levels"]) and torch.equal(a["x0"], b["x0"])
    assert shard_metadata(path)["count"] == "2" and "levels" in shard_metadata(path)
    assert path.read_bytes()[8:9] == b"{"  # safetensors: u64 header length, then a JSON header


def test_cfg_without_uncond_is_an_error(teacher, texts):
    with pytest.raises(ValueError):
        teacher_trajectory(teacher, texts[0], None, torch.randn(SHAPE), torch.tensor([1000.0]), 3, 5.0, 4.0)
