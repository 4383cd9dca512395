"""Teacher fidelity: frame statistics and per-noise-level denoising errors (logic, with oracle models)."""

import numpy as np
import pytest
import torch
from torch import nn

from evaluation.teacher_fidelity import denoising_errors, frame_stats
from pipeline.schedule import flow_to_x0


def test_frame_stats_static_and_stripes():
    static = np.full((5, 8, 8, 3), 90, np.uint8)
    assert frame_stats(static) == {"temporal_diff": 0.0, "spatial_diff": 0.0}
    stripes = np.zeros((2, 8, 8, 3), np.uint8)
    stripes[:, :, ::2] = 255  # columns alternate: every horizontal neighbour differs by 255, no vertical one
    stripes[1] = 255 - stripes[1]  # and every pixel flips between the two frames
    assert frame_stats(stripes) == {"temporal_diff": 255.0, "spatial_diff": 127.5}
    with pytest.raises(ValueError, match="uint8 frames"):
        frame_stats(np.zeros((4, 8, 8), np.uint8))


class Oracle(nn.Module):
    """Predicts the flow whose x0 is `target` (exact x0 -> zero error; the clip mean -> error = var)."""

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t, text):
        sigma = t.view(-1, 1, 1, 1, 1) / 1000
        return (x_t - self.target) / sigma


def test_denoising_errors_oracle_zero_and_mean_predictor_one():
    x0 = torch.randn(1, 6, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    sigmas = (0.1, 0.5, 1.0)
    exact = denoising_errors(Oracle(x0), x0, None, sigmas, torch.Generator().manual_seed(0))
    assert set(exact) == set(sigmas)
    assert all(e["x0_mse"] < 1e-10 and e["x0_rel_error"] < 1e-9 for e in exact.values())
    mean = denoising_errors(Oracle(torch.full_like(x0, float(x0.mean()))), x0, None, sigmas,
                            torch.Generator().manual_seed(0))
    n = x0.numel()
    for e in mean.values():  # mean squared deviation = var * (n - 1) / n
        assert e["x0_rel_error"] == pytest.approx((n - 1) / n, rel=1e-4)
    # the v error at sigma = 1 equals the x0 error (x0_hat = x_t - v_hat with x_t = eps)
    assert mean[1.0]["v_mse"] == pytest.approx(mean[1.0]["x0_mse"], rel=1e-5)
    x_t = torch.zeros_like(x0)
    assert torch.allclose(flow_to_x0(Oracle(x0)(x_t, torch.full((1,), 500.0), None), x_t, 500.0), x0, atol=1e-5)
    with pytest.raises(ValueError, match="noise levels"):
        denoising_errors(Oracle(x0), x0, None, (0.0,), torch.Generator())
