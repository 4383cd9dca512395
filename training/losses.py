"""Training objectives: flow matching (teacher, DMD critic), DMD generator loss, ODE regression. Pure functions.

Conventions (ARCHITECTURE.md §2, `pipeline.schedule`): latents x [B, F, C, H, W]; timesteps t in [0, T]
(T = 1000), sigma = t / T; x_t = (1 - sigma) x0 + sigma eps; models predict the flow v = eps - x0;
x0 = x_t - sigma v. Schedule arithmetic runs in float64 (inside `pipeline.schedule`).

* flow matching:  L = mean((model(x_t, t) - (eps - x0))^2)                       float32
* DMD generator:  real = teacher x0 with CFG, fake = critic x0 at a shared noisy x_t;
                  grad = (fake - real) / mean|x0_hat - real|   (per sample, float64)
                  L = 0.5 * mean((x0_hat - sg(x0_hat - grad))^2)  ->  dL/dx0_hat = grad / numel
* ODE regression: the causal student (block-causal mask, per-frame t) regresses x0 from a teacher
                  trajectory state: L = mean((flow_to_x0(student(x_t, t), x_t, t) - x0)^2)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.guidance import FULL_INTERVAL, guided_flow
from pipeline.networks.wan_dit import TextCond
from pipeline.schedule import add_noise, flow_to_x0, shift_sigma
from pipeline.streaming import block_causal_mask


# ----------------------------------------------------------------------------------------- timesteps
def sample_timesteps(n: int, generator: torch.Generator, shift: float, num_train_timesteps: int = 1000,
                     min_t: float = 0.0, max_t: float = 1000.0, device=None) -> Tensor:
    """t = clamp(T * shift_sigma(u, shift), min_t, max_t), u ~ U[0, 1) drawn from `generator`.

    Computed in float64, returned float32 [n] on `device` (u is drawn on the generator's device so
    a CPU generator gives the same values whatever the target device).
    """
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device)
    t = (num_train_timesteps * shift_sigma(u, shift)).clamp(min_t, max_t)
    return t.to(device=device if device is not None else u.device, dtype=torch.float32)


def drop_text(emb: Tensor, null: Tensor | None, p: float, generator: torch.Generator) -> Tensor:
    """Caption dropout for classifier-free guidance: each sample's text embedding [B, L, D] is
    replaced by `null` ([1, L, D], the negative prompt's) with probability p, so the model also
    learns the unconditional flow v(x_t, t, null) that CFG extrapolates from. p == 0 draws nothing
    (the random stream, and thus a run, is unchanged) and needs no `null`."""
    if p <= 0:
        return emb
    if null.shape[1:] != emb.shape[1:]:
        raise ValueError(f"null text {tuple(null.shape)} does not match the batch's text {tuple(emb.shape)}")
    drop = torch.rand(emb.shape[0], generator=generator, device=generator.device) < p
    return torch.where(drop.to(emb.device)[:, None, None], null.to(emb.dtype), emb)


def per_block_steps(num_blocks: int, num_steps: int, generator: torch.Generator) -> Tensor:
    """Independent uniform step index in [0, num_steps) per block: LongTensor [num_blocks] (ODE init)."""
    return torch.randint(0, num_steps, (num_blocks,), generator=generator, device=generator.device)


# ----------------------------------------------------------------------------------------- flow matching
def flow_matching_loss(model: nn.Module, x0: Tensor, text: TextCond, t: Tensor, eps: Tensor,
                       num_train_timesteps: int = 1000) -> Tensor:
    """Flow-matching MSE of `model` (teacher, or the DMD critic on student samples).

    x0, eps: [B, F, C, H, W]; t: [B] (one per sample) or [B, F] (per frame).
    x_t = add_noise(x0, eps, t); target v = eps - x0; L = mean((model(x_t, t, text) - v)^2) in float32.
    x0 and eps are detached: gradient reaches only the model's parameters (critic on student samples).
    """
    x0, eps = x0.detach(), eps.detach()
    x_t = add_noise(x0, eps, t, num_train_timesteps)
    target = eps.float() - x0.float()
    return F.mse_loss(model(x_t, t, text).float(), target)


# ----------------------------------------------------------------------------------------- DMD
def dmd_scores(teacher: nn.Module, critic: nn.Module, x0_hat: Tensor, text_cond: TextCond,
               text_uncond: TextCond | None, t: Tensor, eps: Tensor, guidance_scale: float,
               num_train_timesteps: int = 1000, guidance_interval=FULL_INTERVAL) -> tuple[Tensor, Tensor]:
    """Real and fake x0 predictions at x_t = add_noise(sg(x0_hat), eps, t), both without gradient.

    x0_hat, eps: [B, F, C, H, W]; t: [B], ONE timestep per sample (broadcast over frames).
    real = flow_to_x0(v_u + g (v_c - v_u)) of the frozen teacher (CFG; g = 1 outside `guidance_interval`,
    per sample, `pipeline.guidance`), fake = flow_to_x0(critic v_c).
    Returns (real_x0, fake_x0), each [B, F, C, H, W], detached.
    """
    if t.dim() != 1 or t.shape[0] != x0_hat.shape[0]:
        raise ValueError(f"dmd_scores wants one timestep per sample, t [B={x0_hat.shape[0]}], got {tuple(t.shape)}")
    with torch.no_grad():
        x_t = add_noise(x0_hat.detach(), eps, t, num_train_timesteps)
        # per-rank t: with a limited interval every rank runs both passes (a sharded teacher's forwards are collectives)
        real = flow_to_x0(guided_flow(teacher, x_t, t, text_cond, text_uncond, guidance_scale, guidance_interval,
                                      num_train_timesteps, skip_unguided=False), x_t, t, num_train_timesteps)
        fake = flow_to_x0(critic(x_t, t, text_cond), x_t, t, num_train_timesteps)
    return real, fake


def dmd_generator_loss(x0_hat: Tensor, real_x0: Tensor, fake_x0: Tensor,
                       frame_mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """DMD generator loss on a student sample x0_hat [B, F, ...] (gradient flows into x0_hat only).

    grad = (fake - real) / mean_{non-batch}|x0_hat - real|   (detached, float64, per sample, over
           every frame; a zero normaliser — student equal to the teacher's x0 — gives grad 0)
    loss = 0.5 * mean_M((x0_hat - sg(x0_hat - grad))^2)  (float64, returned float32), the mean over
           the frames M where frame_mask [F] is True (all when None: the reference masks the first
           block of a sample whose first latent was re-encoded, training/first_frame.py)
         -> dloss/dx0_hat = grad / |M| on M, 0 elsewhere
    logs: dmd_gradient_norm = mean|grad| (as the reference logs it).
    """
    with torch.no_grad():
        x, real, fake = x0_hat.detach().double(), real_x0.detach().double(), fake_x0.detach().double()
        dims = tuple(range(1, x.dim()))
        norm = (x - real).abs().mean(dim=dims, keepdim=True)
        grad = torch.where(norm > 0, (fake - real) / norm.clamp_min(torch.finfo(torch.float64).tiny),
                           torch.zeros_like(fake))
    xd = x0_hat.double()
    target = (xd - grad).detach()
    if frame_mask is not None:
        if frame_mask.shape != (x0_hat.shape[1],) or not frame_mask.any():
            raise ValueError(f"frame_mask must be a non-empty bool [{x0_hat.shape[1]}], got {tuple(frame_mask.shape)}")
        xd, target = xd[:, frame_mask.to(xd.device)], target[:, frame_mask.to(xd.device)]
    loss = 0.5 * F.mse_loss(xd, target, reduction="mean")
    return loss.float(), {"dmd_gradient_norm": grad.abs().mean().float()}


def dmd_loss(teacher: nn.Module, critic: nn.Module, x0_hat: Tensor, text_cond: TextCond,
             text_uncond: TextCond | None, t: Tensor, eps: Tensor, guidance_scale: float,
             num_train_timesteps: int = 1000, frame_mask: Tensor | None = None,
             guidance_interval=FULL_INTERVAL) -> tuple[Tensor, dict[str, Tensor]]:
    """dmd_scores + dmd_generator_loss in one call: (loss float32 scalar, logs)."""
    real, fake = dmd_scores(teacher, critic, x0_hat, text_cond, text_uncond, t, eps, guidance_scale,
                            num_train_timesteps, guidance_interval)
    return dmd_generator_loss(x0_hat, real, fake, frame_mask)


# ----------------------------------------------------------------------------------------- ODE regression
def ode_inputs(x_levels: Tensor, levels: Tensor, steps: Tensor, frames_per_block: int) -> tuple[Tensor, Tensor]:
    """Pick each block's trajectory state at its own level.

    x_levels: [B, K, F, C, H, W] (states at levels tau[0..K-1]); levels: [K] float64;
    steps: [nb] (shared over the batch) or [B, nb] step indices, nb = F / frames_per_block.
    Returns x_t [B, F, C, H, W] and per-frame timesteps t [B, F] float32 (t[b, f] = tau[steps[b, f // fpb]]).
    """
    b, _, nf = x_levels.shape[:3]
    if nf % frames_per_block:
        raise ValueError(f"{nf} frames is not a multiple of frames_per_block {frames_per_block}")
    steps = steps.to(x_levels.device).long().expand(b, nf // frames_per_block)
    frame_steps = steps.repeat_interleave(frames_per_block, dim=1)  # [B, F]
    idx = frame_steps.view(b, 1, nf, *([1] * (x_levels.dim() - 3))).expand(b, 1, *x_levels.shape[2:])
    x_t = torch.gather(x_levels, 1, idx).squeeze(1)
    t = levels.to(x_levels.device)[frame_steps].float()
    return x_t, t


def causal_x0(student: nn.Module, x_t: Tensor, t: Tensor, text: TextCond, frames_per_block: int,
              tokens_per_frame: int, num_train_timesteps: int = 1000) -> Tensor:
    """The causal student's x0 prediction over a whole clip under a block-causal mask.

    x_t: [B, F, C, H, W]; t: [B, F] per-frame timesteps. Block i (frames i*fpb .. (i+1)*fpb - 1)
    attends to blocks <= i: mask = block_causal_mask(F / fpb, fpb * tokens_per_frame, prefix 0)
    (tokens_per_frame = latent-frame tokens, (H / p_h) * (W / p_w) for temporal patch 1).
    """
    nf = x_t.shape[1]
    if nf % frames_per_block:
        raise ValueError(f"{nf} frames is not a multiple of frames_per_block {frames_per_block}")
    mask = block_causal_mask(nf // frames_per_block, frames_per_block * tokens_per_frame, 0, x_t.device)
    flow = student(x_t, t, text, attn_mask=mask)
    return flow_to_x0(flow, x_t, t, num_train_timesteps)


def ode_regression_loss(student: nn.Module, x_t: Tensor, t: Tensor, x0: Tensor, text: TextCond,
                        frames_per_block: int, tokens_per_frame: int, num_train_timesteps: int = 1000) -> Tensor:
    """L = mean((causal_x0(student, x_t, t) - x0)^2) in float32; x_t, x0 [B, F, C, H, W], t [B, F]."""
    pred = causal_x0(student, x_t, t, text, frames_per_block, tokens_per_frame, num_train_timesteps)
    return F.mse_loss(pred.float(), x0.detach().float())
