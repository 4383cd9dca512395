"""The EMA's ZeRO-3-style partition of ZeRO 0-2 parameters (pure logic; the 2-process path is in
tests/integration/test_ray_train.py)."""

import pytest
import torch

from training.ema import EMA, partition


def test_partitions_cover_the_tensor_once_with_padding():
    flat = torch.arange(10.0)
    parts = [partition(flat, r, 3) for r in range(3)]
    assert [p.numel() for p in parts] == [4, 4, 4]
    assert torch.equal(torch.cat(parts)[:10], flat) and torch.equal(parts[2][2:], torch.zeros(2))


def test_single_process_ema_is_the_full_average():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.5, start_step=0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(1)
    full = ema.full_state_dict()
    for n, p in model.named_parameters():
        assert full[n].shape == p.shape
        assert torch.allclose(full[n], start[n] + 0.5)


def test_a_full_tensor_ema_state_from_before_sharding_still_loads():
    """Checkpoints written before the ZeRO 0-2 EMA was sharded hold full tensors (e.g. the shipped
    world teacher's run): they resume, each rank keeping its part."""
    model = torch.nn.Linear(3, 2)
    old = {n: torch.full_like(p, 0.25) for n, p in model.named_parameters()}
    ema = EMA(model, decay=0.5, start_step=0)
    ema.load_state_dict(old)
    assert all(torch.equal(ema.full_state_dict()[n], old[n]) for n in old)
    with pytest.raises(ValueError, match="another world size"):
        ema.load_state_dict({n: torch.zeros(7) for n in old})
