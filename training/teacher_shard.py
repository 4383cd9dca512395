"""A frozen network sharded across ranks: ZeRO-3 parameter partitioning without an optimizer.

The paper's real score is Wan2.1-T2V-14B: 14.29 B bf16 parameters, 28.6 GB on every GPU when
replicated. `shard_frozen` hands the frozen teacher to DeepSpeed ZeRO-3 with no optimizer (the
"ZeRO-Inference" use of stage 3): each rank keeps a flat 1/world partition of every parameter
(`param.ds_tensor`, ceil(numel / world) values), and DeepSpeed's module hooks all-gather a module's
parameters just before its forward and release them after, so a forward holds about one DiT
block's full weights at a time: 28.6 GB / world + one block (~0.7 GB for 14B) per GPU.

Every rank must run the same forwards in the same order (each gather is a collective): the
trainer's schedule choices are broadcast from rank 0, so they do.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig
from .engines import deepspeed_config


def shard_frozen(model: nn.Module, train: TrainConfig, dtype: torch.dtype) -> nn.Module:
    """`model` (frozen, eval) with its parameters partitioned across ranks; call it as before."""
    import deepspeed

    cfg = deepspeed_config(train, dtype)
    # Partition every parameter: the default persistence threshold (1e5 values) would keep small
    # ones (norms, biases, modulations) whole on every rank.
    cfg["zero_optimization"] = {"stage": 3, "stage3_param_persistence_threshold": 0}
    engine, _, _, _ = deepspeed.initialize(model=model, config=cfg)
    module = engine.module.eval()
    module.requires_grad_(False)
    module.sharded_engine = engine  # keeps DeepSpeed's hooks and partition state alive with the module
    return module


def local_numel(model: nn.Module) -> int:
    """Parameter values this rank holds (its partitions under ZeRO-3)."""
    return sum((p.ds_tensor if hasattr(p, "ds_tensor") else p).numel() for p in model.parameters())
