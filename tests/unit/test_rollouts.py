"""Training rollouts: same values as inference, gradient only through the chosen windows."""

import pytest
import torch

from pipeline.networks.wan_dit import build_dit
from pipeline.samplers import block_ar, rolling
from pipeline.schedule import denoising_levels
from pipeline.streaming import CachedBackend
from pipeline.windows import ContextRule, rolling_pass
from training.rollouts import rolling_grad_passes, rolling_rollout, self_forcing_rollout

SHAPE = (1, 2, 4, 4, 4)
RULE = ContextRule(1, 5)


@pytest.fixture
def model(micro_cfg):
    return build_dit(micro_cfg, seed=0, zero_head=False)


@pytest.mark.parametrize("offset", [0, 1, 2])
def test_rolling_rollout_values_equal_inference_and_grads_tile(model, offset):
    levels = denoising_levels([1000, 750, 500], 5.0)
    text = model.encode_text(torch.randn(1, 5, 8))
    n, score = 8, 5
    sample, finals = rolling_rollout(model, text, levels, SHAPE, n, score, offset, RULE, torch.Generator().manual_seed(3))
    backend = CachedBackend.build(model, text, RULE)
    with torch.no_grad():
        ref = torch.cat([x for _, x in rolling(backend, levels, SHAPE, n, torch.Generator().manual_seed(3))], 1)
    assert torch.allclose(finals, ref, atol=1e-6)  # the rollout is the inference stream
    assert sample.shape == (1, score * 2, 4, 4, 4) and sample.requires_grad
    # every scored block gets its sample from exactly one gradient window
    hits = {b: 0 for b in range(n - score, n)}
    for w in rolling_grad_passes(n, 3, offset, score):
        for b in rolling_pass(w, n, 3).blocks:
            if b in hits:
                hits[b] += 1
    assert set(hits.values()) == {1}
    sample.sum().backward()
    assert model.head.head.weight.grad is not None and torch.isfinite(model.head.head.weight.grad).all()


def test_only_gradient_windows_build_a_graph(model):
    levels = denoising_levels([1000, 750, 500], 5.0)
    text = model.encode_text(torch.randn(1, 5, 8))
    text = type(text)(k=[k.detach() for k in text.k], v=[v.detach() for v in text.v])
    sample, finals = rolling_rollout(model, text, levels, SHAPE, 6, 6, 0, RULE, torch.Generator().manual_seed(0))
    assert not finals.requires_grad
    # scored sample of block b differs from its final value unless its window was the last step
    assert sample.requires_grad and sample.grad_fn is not None


def test_self_forcing_rollout_matches_truncated_block_ar(model):
    levels = denoising_levels([1000, 750, 500], 5.0)
    text = model.encode_text(torch.randn(1, 5, 8))
    sample, finals = self_forcing_rollout(model, text, levels, SHAPE, 5, 3, 1, RULE, torch.Generator().manual_seed(2))
    backend = CachedBackend.build(model, text, RULE)
    with torch.no_grad():
        ref = torch.cat([x for _, x in block_ar(backend, levels[:2], SHAPE, 5, torch.Generator().manual_seed(2))], 1)
    assert torch.allclose(finals, ref, atol=1e-6)
    assert torch.allclose(sample.detach(), finals[:, 4:], atol=1e-6)  # exit-step x0 is the block's output
    sample.square().mean().backward()
    assert model.blocks[0].self_attn.q.weight.grad.abs().sum() > 0
