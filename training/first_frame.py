"""First-frame handling of a DMD sample cut from the middle of a rollout (the reference's rule).

A rollout longer than the context is scored on its last `score` latent frames. With a codec whose
first latent encodes one frame alone (`codec.first_latent_is_image`, the Wan VAE), a clip never
opens on a mid-video latent in the teacher's training data, so the first scored latent is replaced
by an *image latent*: the latents up to and including it are decoded, the last pixel frame --
the last one before the remaining scored latents -- is encoded alone, and that latent takes the
first scored latent's place (without gradient). The first scored block is then masked out of the
generator's DMD loss (the critic still trains on the whole sample, as in the reference).

For codecs without temporal compression (the pixel codec) a mid-video latent is an ordinary clip
opening, so nothing is replaced and nothing is masked: every scored block keeps its gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def image_latent(codec, latents: Tensor) -> Tensor:
    """latents [B, n, C, h, w] (a clip up to and including the latent to replace) -> the image
    latent [B, 1, C, h, w] of its last decoded pixel frame, encoded alone."""
    frame = codec.decode(latents)[:, -1:]
    return codec.encode(frame).to(latents.dtype)


def replace_first_latent(codec, before: Tensor, sample: Tensor) -> Tensor:
    """sample [B, F, C, h, w] with its first latent replaced by the image latent of the clip
    `before` [B, n, C, h, w] (the clean latents preceding the window, n >= 1) + sample[:, :1];
    latents 1.. keep their gradient."""
    clip = torch.cat([before.to(sample.dtype), sample[:, :1].detach()], dim=1)
    return torch.cat([image_latent(codec, clip), sample[:, 1:]], dim=1)


def first_block_mask(num_frames: int, frames_per_block: int, device=None) -> Tensor:
    """bool [num_frames]: False on the first block's frames (excluded from the DMD loss)."""
    mask = torch.ones(num_frames, dtype=torch.bool, device=device)
    mask[:frames_per_block] = False
    return mask
