"""pipeline.guidance: classifier-free guidance limited to an interval of noise levels."""

import pytest
import torch

from pipeline.config import ConfigError, SamplerConfig
from pipeline.guidance import FULL_INTERVAL, guidance_weights, guided_flow
from pipeline.samplers import bidirectional
from pipeline.schedule import teacher_sigmas


class Linear:
    """flow = x * (1 + cond): the conditional and unconditional passes differ, and calls are counted."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond):
        self.calls.append(cond)
        return x * (1.0 + cond)


def test_weights_inside_and_outside_the_interval():
    t = torch.tensor([1000.0, 800.0, 700.0, 300.0, 100.0])
    g = guidance_weights(t, 3.0, (0.2, 0.7))
    assert g.tolist() == [1.0, 1.0, 3.0, 3.0, 1.0]  # (lo, hi]: 0.7 is in, 0.2 would be out
    assert guidance_weights(t, 3.0, FULL_INTERVAL) == 3.0  # the full interval: one number, plain CFG
    assert guidance_weights(torch.tensor(950.0), 2.0, (0.0, 0.9)) == 1.0


def test_full_interval_is_plain_cfg_bit_for_bit():
    x, t = torch.randn(2, 3, 4, 2, 2), torch.tensor([900.0, 100.0])
    model = Linear()
    got = guided_flow(model, x, t, 0.5, 0.1, 2.5)
    c, u = x * 1.5, x * 1.1
    assert torch.equal(got, u + 2.5 * (c - u))


def test_per_sample_guidance_and_the_skipped_pass():
    x, t = torch.randn(2, 3, 4, 2, 2), torch.tensor([950.0, 500.0])
    model = Linear()
    got = guided_flow(model, x, t, 0.5, 0.1, 2.0, (0.0, 0.9))
    assert torch.allclose(got[0], x[0] * 1.5)  # sigma 0.95: outside, conditional only
    assert torch.allclose(got[1], x[1] * (1.1 + 2.0 * 0.4))  # sigma 0.5: guided
    model.calls.clear()
    guided_flow(model, x, torch.tensor([950.0, 990.0]), 0.5, 0.1, 2.0, (0.0, 0.9))
    assert model.calls == [0.5]  # nobody guided: no unconditional pass
    model.calls.clear()
    guided_flow(model, x, torch.tensor([950.0, 990.0]), 0.5, 0.1, 2.0, (0.0, 0.9), skip_unguided=False)
    assert model.calls == [0.5, 0.1]  # a sharded teacher's forwards are collectives: every rank runs both
    with pytest.raises(ValueError, match="unconditional"):
        guided_flow(model, x, t, 0.5, None, 2.0, (0.0, 0.9))


def test_bidirectional_guides_only_the_steps_in_the_interval():
    n, shift, lo, hi = 8, 2.0, 0.0, 0.8
    sigmas = teacher_sigmas(n, shift)[:-1]
    inside = int(((sigmas > lo) & (sigmas <= hi)).sum())
    assert 0 < inside < n
    model = Linear()
    gen = torch.Generator().manual_seed(0)
    list(bidirectional(model, torch.tensor(0.5), torch.tensor(0.1), (1, 4, 2, 2, 2), n, shift, 2.0, gen, 2,
                       guidance_interval=(lo, hi)))
    assert len(model.calls) == n + inside


@pytest.mark.parametrize("interval", [(0.5, 0.5), (-0.1, 1.0), (0.2, 1.5), (0.9, 0.1)])
def test_bad_intervals_name_the_key(interval):
    with pytest.raises(ConfigError, match="sampler.guidance_interval"):
        SamplerConfig(guidance_interval=interval).validate()
