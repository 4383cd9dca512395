"""Flow-matching noise schedule (Wan2.1 / Rolling Forcing conventions). Pure functions.

Timesteps t live in [0, T] (T = `num_train_timesteps`, 1000) and map to noise levels sigma = t / T.
    x_t  = (1 - sigma) * x0 + sigma * eps                        (add_noise)
    v    = eps - x0                                              (the network predicts this flow)
    x0   = x_t - sigma * v                                       (flow_to_x0)
Shifted schedule (Wan: s = 5), applied to sigma in float64:
    sigma' = s * sigma / (1 + (s - 1) * sigma)
The few-step list [1000, 800, 600, 400, 200] is warped through the shifted table to
[1000, 952.4, 882.4, 769.2, 555.6] (the values the student is conditioned on).
"""

from __future__ import annotations

import torch
from torch import Tensor


def shift_sigma(sigma: Tensor | float, shift: float) -> Tensor:
    """sigma' = s*sigma / (1 + (s-1)*sigma), computed in float64."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def warp_timesteps(steps: list[int] | list[float], shift: float, num_train_timesteps: int = 1000) -> Tensor:
    """Map raw step values through the shifted schedule: t' = T * shift_sigma(t / T). float64 [K]."""
    t = torch.as_tensor(list(steps), dtype=torch.float64)
    return num_train_timesteps * shift_sigma(t / num_train_timesteps, shift)


def denoising_levels(steps: list[int], shift: float, num_train_timesteps: int = 1000, warp: bool = True) -> Tensor:
    """The K timesteps tau[0] > ... > tau[K-1] a student denoises through (float64 [K])."""
    if warp:
        return warp_timesteps(steps, shift, num_train_timesteps)
    return torch.as_tensor(list(steps), dtype=torch.float64)


def teacher_sigmas(num_steps: int, shift: float) -> Tensor:
    """Euler sigmas for the bidirectional teacher: shifted linspace(1, 0, n+1), float64 [n+1]."""
    return shift_sigma(torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64), shift)


def _sigma_like(t: Tensor | float, x: Tensor, num_train_timesteps: int) -> Tensor | float:
    """sigma = t / T broadcast against x [B, F, C, H, W]; t is a Python number, [B] or [B, F].

    A Python number stays a Python number (no host->device copy in the sampling loop).
    """
    if isinstance(t, int | float):
        return float(t) / num_train_timesteps
    sigma = torch.as_tensor(t, dtype=torch.float64, device=x.device) / num_train_timesteps
    while sigma.dim() < x.dim():
        sigma = sigma.unsqueeze(-1)
    return sigma


def add_noise(x0: Tensor, eps: Tensor, t: Tensor | float, num_train_timesteps: int = 1000) -> Tensor:
    """x_t = (1 - sigma) x0 + sigma eps, computed in float64 and cast back to x0's dtype."""
    sigma = _sigma_like(t, x0, num_train_timesteps)
    return ((1.0 - sigma) * x0.double() + sigma * eps.double()).to(x0.dtype)


def flow_to_x0(flow: Tensor, x_t: Tensor, t: Tensor | float, num_train_timesteps: int = 1000) -> Tensor:
    """x0 = x_t - sigma * v (float64 inside)."""
    sigma = _sigma_like(t, x_t, num_train_timesteps)
    return (x_t.double() - sigma * flow.double()).to(flow.dtype)


def x0_to_flow(x0: Tensor, x_t: Tensor, t: Tensor | float, num_train_timesteps: int = 1000) -> Tensor:
    """v = (x_t - x0) / sigma (float64 inside); undefined at sigma = 0."""
    sigma = _sigma_like(t, x_t, num_train_timesteps)
    return ((x_t.double() - x0.double()) / sigma).to(x0.dtype)


def euler_step(x_t: Tensor, flow: Tensor, sigma: float | Tensor, sigma_next: float | Tensor) -> Tensor:
    """One flow-matching Euler step: x_{next} = x_t + (sigma_next - sigma) * v."""
    return (x_t.double() + (float(sigma_next) - float(sigma)) * flow.double()).to(x_t.dtype)
