"""Student weights for the rollout workers: full fp32 CPU tensors under every ZeRO stage, versioned.

Version schedule (publish_every = M): after `done` optimizer steps the learner's weights are version
done // M; it publishes at construction (done = 0), whenever done % M == 0, and on the first step
after a resume (its construction-time weights were the pre-resume ones).
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn


def full_weights(module: nn.Module) -> dict[str, Tensor]:
    """`module.state_dict()` (keys without DeepSpeed's "module." prefix) as fp32 CPU copies on rank 0;
    {} on the other ranks. Under ZeRO-3 every rank must call it: each parameter is gathered in turn
    (deepspeed.zero.GatheredParameters, a collective), so peak memory is one full parameter."""
    rank = torch_dist.get_rank() if torch_dist.is_initialized() else 0

    def copy(t: Tensor) -> Tensor:
        return t.detach().to("cpu", torch.float32, copy=True)

    if not any(hasattr(p, "ds_tensor") for p in module.parameters()):
        return {k: copy(v) for k, v in module.state_dict().items()} if rank == 0 else {}
    import deepspeed

    out: dict[str, Tensor] = {}
    for name, p in module.named_parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            if rank == 0:
                out[name] = copy(p.data)
    if rank == 0:
        out.update({name: copy(b) for name, b in module.named_buffers()})
    return out


class PublishSchedule:
    """When to publish and which version the learner is at (see the module docstring)."""

    def __init__(self, every: int):
        self.every = every
        self.published_at: int | None = None  # `done` of the last publish
        self.first = True  # no train step since construction

    def version(self, done: int) -> int:
        return done // self.every

    def due(self, done: int) -> bool:
        """Publish now, after `done` optimizer steps? (call once per step, before the rollout)."""
        first, self.first = self.first, False
        if self.published_at is None:
            return True
        return done != self.published_at and (first or done % self.every == 0)

    def mark(self, done: int) -> None:
        self.published_at = done
