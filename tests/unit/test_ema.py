"""The EMA's ZeRO-3-style partition of ZeRO 0-2 parameters (pure logic; the 2-process path is in
tests/integration/test_ray_train.py)."""

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
