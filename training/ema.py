"""EMA of a DeepSpeed engine's weights that works under every ZeRO stage.

Each rank keeps the EMA of the parameter data it holds: the full tensor under ZeRO 0-2, its own
flat partition (`param.ds_tensor`) under ZeRO-3, so memory scales like the model shards.
    ema <- decay * ema + (1 - decay) * param        (from `start_step`; before it, ema = param)
`full_state_dict()` (a collective) reassembles full tensors in the Wan key layout on rank 0.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import Tensor


def _local(p) -> Tensor:
    return p.ds_tensor if hasattr(p, "ds_tensor") else p.data


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float, start_step: int):
        self.decay, self.start_step = decay, start_step
        self.params = dict(module.named_parameters())
        self.shadow = {n: _local(p).detach().float().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = self.decay if step >= self.start_step else 0.0
        for n, p in self.params.items():
            self.shadow[n].mul_(decay).add_(_local(p).float(), alpha=1.0 - decay)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} tensors, e.g. {sorted(missing)[0]}")
        for n in self.shadow:
            self.shadow[n].copy_(state[n])

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, Tensor]:
        """Full EMA tensors on rank 0 (others get {}); every rank must call it."""
        zero3 = any(hasattr(p, "ds_tensor") for p in self.params.values())
        rank = torch_dist.get_rank() if torch_dist.is_initialized() else 0
        if not zero3:
            return {n: t.clone() for n, t in self.shadow.items()} if rank == 0 else {}
        world = torch_dist.get_world_size()
        out = {}
        for n, p in self.params.items():
            parts = [torch.empty_like(self.shadow[n]) for _ in range(world)]
            torch_dist.all_gather(parts, self.shadow[n])
            if rank == 0:
                out[n] = torch.cat(parts)[: p.ds_numel].view(p.ds_shape).clone()
        return out
