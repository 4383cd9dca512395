import pytest
import torch

from pipeline.schedule import (add_noise, denoising_levels, euler_step, flow_to_x0, shift_sigma, teacher_sigmas,
                               warp_timesteps, x0_to_flow)


def test_warped_step_list_matches_wan_table():
    warped = warp_timesteps([1000, 800, 600, 400, 200], shift=5.0)
    assert warped.dtype == torch.float64
    assert torch.allclose(warped, torch.tensor([1000.0, 952.381, 882.353, 769.231, 555.556], dtype=torch.float64), atol=1e-3)


def test_unwarped_levels_pass_through():
    assert denoising_levels([1000, 500], 5.0, warp=False).tolist() == [1000.0, 500.0]


def test_shift_is_monotone_with_fixed_endpoints():
    s = torch.linspace(0, 1, 101, dtype=torch.float64)
    out = shift_sigma(s, 5.0)
    assert out[0] == 0 and out[-1] == 1 and bool((out[1:] > out[:-1]).all())
    assert torch.allclose(shift_sigma(s, 1.0), s)


def test_noise_flow_and_x0_round_trip():
    x0, eps = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 4, 5, 5)
    t = torch.tensor([[250.0, 500.0, 900.0]] * 2)  # per-frame timesteps
    xt = add_noise(x0, eps, t)
    flow = eps - x0
    assert torch.allclose(flow_to_x0(flow, xt, t), x0, atol=1e-5)
    assert torch.allclose(x0_to_flow(x0, xt, t), flow, atol=1e-4)
    assert torch.allclose(add_noise(x0, eps, 0.0), x0) and torch.allclose(add_noise(x0, eps, 1000.0), eps)


def test_euler_on_exact_flow_reaches_data():
    x0, eps = torch.randn(1, 2, 3, 4, 4), torch.randn(1, 2, 3, 4, 4)
    sig = teacher_sigmas(7, 3.0)
    assert sig[0] == 1 and sig[-1] == 0
    x = eps.clone()
    for i in range(7):
        x = euler_step(x, eps - x0, sig[i], sig[i + 1])  # straight-line flow: Euler is exact
    assert torch.allclose(x, x0, atol=1e-5)


@pytest.mark.parametrize("steps", [[1000], [1000, 750, 500, 250]])
def test_levels_decrease(steps):
    lv = denoising_levels(steps, 5.0)
    assert all(a > b for a, b in zip(lv, lv[1:]))
