"""Teacher ODE trajectories for the student's warm start (ode_init), and their safetensors shards.

The teacher integrates the flow ODE dx/dsigma = v(x, sigma) with Euler steps from sigma = 1 (noise)
to sigma = 0 on its shifted grid (`pipeline.schedule.teacher_sigmas`), with CFG, exactly like
`pipeline.samplers.bidirectional`, except that the student's levels sigma_k = tau_k / T are merged
into the grid so the state at every level is hit exactly (not interpolated):

    grid   = sort_desc(level sigmas  U  teacher sigmas not within 1e-9 of a level sigma)
    x      <- x + (sigma_{i+1} - sigma_i) * v(x, T sigma_i)            (float64 step, cast back)
    x_levels[k] = x at sigma = tau_k / T;  x0 = x at sigma = 0

A pair = (x_levels [K, F, C, H, W], x0 [F, C, H, W]); the student regresses x0 from x_levels[k]
(per-block k, `training.losses.ode_inputs` / `ode_regression_loss`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from pipeline.guidance import FULL_INTERVAL, guided_flow
from pipeline.networks.wan_dit import TextCond
from pipeline.schedule import euler_step, teacher_sigmas

_MERGE_ATOL = 1e-9


def merged_sigmas(levels: Tensor, num_steps: int, shift: float, num_train_timesteps: int = 1000) -> Tensor:
    """The Euler grid with the level sigmas inserted: float64 [M], 1 = s_0 > ... > s_{M-1} = 0.

    levels: tau[0] > ... > tau[K-1] in [0, T]. A teacher sigma within 1e-9 of a level is replaced by
    the level itself (no vanishing steps); the level values are kept bit-exact.
    """
    lev = torch.as_tensor(levels, dtype=torch.float64).cpu() / num_train_timesteps
    if lev.dim() != 1 or len(lev) == 0:
        raise ValueError(f"levels must be a non-empty 1-D tensor, got shape {tuple(lev.shape)}")
    if (lev < 0).any() or (lev > 1).any() or (lev[1:] >= lev[:-1]).any():
        raise ValueError(f"levels must be strictly decreasing within [0, {num_train_timesteps}], got {lev.tolist()}")
    grid = teacher_sigmas(num_steps, shift)
    far = (grid[:, None] - lev[None, :]).abs().min(dim=1).values > _MERGE_ATOL
    return torch.cat([lev, grid[far]]).unique().flip(0)


@torch.no_grad()
def teacher_trajectory(teacher: nn.Module, text: TextCond, uncond: TextCond | None, noise: Tensor,
                       levels: Tensor, num_steps: int, shift: float, guidance_scale: float,
                       num_train_timesteps: int = 1000, guidance_interval=FULL_INTERVAL) -> tuple[Tensor, Tensor]:
    """Euler-integrate the teacher (CFG) from `noise` [B, F, C, H, W] and record the student levels.

    levels: float64 [K], tau[0] > ... > tau[K-1] (the student's warped steps).
    Returns x_levels [K, B, F, C, H, W] (x_levels[0] is `noise` itself when tau[0] == T) and the end
    state x0 [B, F, C, H, W]. Deterministic given the noise.
    """
    sigmas = merged_sigmas(levels, num_steps, shift, num_train_timesteps)
    lev = torch.as_tensor(levels, dtype=torch.float64).cpu() / num_train_timesteps
    want = {float(s): k for k, s in enumerate(lev)}
    recorded: list[Tensor | None] = [None] * len(lev)
    sig = sigmas.tolist()
    x = noise
    for i, s in enumerate(sig):
        if s in want:
            recorded[want[s]] = x
        if i + 1 == len(sig):
            break
        t = torch.full((x.shape[0],), s * num_train_timesteps, device=x.device)
        flow = guided_flow(teacher, x, t, text, uncond, guidance_scale, guidance_interval, num_train_timesteps)
        x = euler_step(x, flow, s, sig[i + 1])
    missing = [k for k, r in enumerate(recorded) if r is None]
    if missing:  # cannot happen: every level sigma is in the grid by construction
        raise RuntimeError(f"levels {missing} were not reached by the Euler grid")
    return torch.stack(recorded), x


def make_ode_pairs(teacher: nn.Module, text_conds: Iterable[tuple[TextCond, TextCond | None]],
                   shape: tuple[int, ...], levels: Tensor, num_steps: int, shift: float, guidance_scale: float,
                   generator: torch.Generator, device=None, dtype: torch.dtype = torch.float32,
                   num_train_timesteps: int = 1000, guidance_interval=FULL_INTERVAL) -> Iterator[dict[str, Tensor]]:
    """One teacher trajectory per (cond, uncond) text pair (batch 1 each), in order.

    shape: the latent clip (F, C, H, W); noise [1, F, C, H, W] is drawn from `generator` on `device`.
    Yields {"x_levels": [K, F, C, H, W], "x0": [F, C, H, W]} as contiguous CPU tensors.
    """
    shape = tuple(shape)
    if len(shape) != 4:
        raise ValueError(f"shape must be (F, C, H, W), got {shape}")
    for cond, uncond in text_conds:
        noise = torch.randn((1, *shape), generator=generator, device=device, dtype=dtype)
        x_levels, x0 = teacher_trajectory(teacher, cond, uncond, noise, levels, num_steps, shift, guidance_scale,
                                          num_train_timesteps, guidance_interval)
        yield {"x_levels": x_levels[:, 0].contiguous().cpu(), "x0": x0[0].contiguous().cpu()}


def save_pairs(pairs: Iterable[dict[str, Tensor]], path: str | Path, metadata: dict[str, str] | None = None) -> int:
    """Write one shard: keys pair{i}.{name} for every tensor of each pair (x_levels, x0 and any
    extras such as the prompt's text embedding); metadata {"count": n, **metadata}. Returns n."""
    tensors: dict[str, Tensor] = {}
    n = 0
    for n, pair in enumerate(pairs, start=1):
        for name, value in pair.items():
            tensors[f"pair{n - 1}.{name}"] = value.detach().contiguous().cpu()
    meta = {**(metadata or {}), "count": str(n)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return n


def load_pairs(path: str | Path) -> list[dict[str, Tensor]]:
    """Read a shard written by `save_pairs` -> [{"x_levels", "x0", ...extras}, ...] in saved order."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "count" not in meta:
            raise ValueError(f"{path}: not an ODE-pair shard (no 'count' in its metadata)")
        n = int(meta["count"])
        pairs: list[dict[str, Tensor]] = [{} for _ in range(n)]
        for key in f.keys():
            index, _, name = key.partition(".")
            i = int(index.removeprefix("pair")) if index.startswith("pair") and index[4:].isdigit() else -1
            if not 0 <= i < n:
                raise ValueError(f"{path}: tensor {key!r} outside the {n} pairs its metadata counts")
            pairs[i][name] = f.get_tensor(key)
        if any({"x_levels", "x0"} - set(p) for p in pairs):
            raise ValueError(f"{path}: metadata count {n} does not match its tensors (pairs lack x_levels/x0)")
        return pairs


def shard_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a shard (count plus whatever `save_pairs` was given)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
