"""A meta-device dry run of a config: every role built and pushed through one forward at the real
shapes, allocating nothing.

On the meta device tensors carry shapes and dtypes but no storage, so the paper's 14B teacher and
1.3B student and critic build in seconds on a laptop and a forward checks that every shape of the
config agrees (latent grid, patching, text states, RoPE over the context) before a cluster job does.
Each role scores the stream context the DMD step scores: x [1, context_frames, C, h, w] at t = 500
with text states [1, text_len, text_dim] -> the flow, of x's shape.
"""

from __future__ import annotations

import time

import torch

from pipeline.config import latent_hw
from pipeline.networks.wan_dit import build_dit
from training.roles import check_roles


def meta_dry_run(cfg) -> dict:
    """{role: {"params", "input", "output", "seconds"}} for student, teacher and critic."""
    roles = check_roles(cfg)
    h, w = latent_hw(cfg.video, cfg.codec)
    shape = (1, cfg.stream.context_frames, cfg.codec.latent_channels, h, w)
    out = {}
    for role, model_cfg in roles.items():
        start = time.perf_counter()
        model = build_dit(model_cfg, "meta")
        x = torch.empty(shape, device="meta")
        text = torch.empty(1, model_cfg.text_len, model_cfg.text_dim, device="meta")
        with torch.no_grad():
            flow = model(x, torch.full((1,), 500.0, device="meta"), model.encode_text(text))
        if tuple(flow.shape) != shape:
            raise RuntimeError(f"{role}: a forward of {shape} returned {tuple(flow.shape)}")
        out[role] = {"params": sum(p.numel() for p in model.parameters()), "input": list(shape),
                     "output": list(flow.shape), "seconds": round(time.perf_counter() - start, 2)}
    return out
