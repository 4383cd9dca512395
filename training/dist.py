"""Process-group set-up for training: gloo on CPU, NCCL on GPU; works with 1 process and no launcher."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as torch_dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join (or create) the default process group; returns (rank, world_size).

    Without a launcher (no RANK in the environment) this is a world of one on 127.0.0.1.
    """
    import deepspeed

    if not torch_dist.is_initialized():
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    return torch_dist.get_rank(), torch_dist.get_world_size()


def barrier() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()


def broadcast_int(value: int, src: int = 0) -> int:
    """Rank `src`'s value on every rank (schedule choices: window offset, exit step)."""
    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.long)
    torch_dist.broadcast(t, src)
    return int(t.item())


def all_true(flag: bool) -> bool:
    """Logical AND across ranks (e.g. 'every rank's weights are finite')."""
    if not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.long)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MIN)
    return bool(t.item())
