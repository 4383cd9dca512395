"""training.lr_schedule: warmup, then constant or a decay with its own start (pure function)."""

import math

import pytest
import torch

from training.lr_schedule import lr_factor


def test_warmup_then_constant():
    assert lr_factor(0, warmup_steps=4) == 0.25 and lr_factor(3, warmup_steps=4) == 1.0
    assert lr_factor(10_000) == 1.0


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_decay_starts_at_its_step_and_holds_the_floor(decay):
    f = [lr_factor(s, decay=decay, decay_start=100, decay_steps=200, min_lr_ratio=0.1) for s in range(400)]
    assert f[:101] == [1.0] * 101  # constant up to and including the start
    assert all(a >= b for a, b in zip(f[100:], f[101:]))  # then never rises
    assert math.isclose(f[200], 0.55)  # half way: the cosine and the line cross
    assert f[300:] == [pytest.approx(0.1)] * 100


def test_scheduler_follows_the_config_it_resumes_with():
    """A constant-rate run's scheduler state resumed under a decay takes the decay from its step on."""
    from training.config import OptimConfig
    from training.engines import make_optimizer, make_scheduler

    p = [torch.nn.Parameter(torch.zeros(1))]
    assert make_scheduler(make_optimizer(p, OptimConfig(lr=1.0)), OptimConfig(lr=1.0)) is None
    warm = OptimConfig(lr=1.0, warmup_steps=10)
    opt = make_optimizer(p, warm)
    const = make_scheduler(opt, warm)
    for _ in range(5):
        opt.step()
        const.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.6)
    decay = OptimConfig(lr=1.0, warmup_steps=10, decay="linear", decay_start=5, decay_steps=10)
    opt2 = make_optimizer(p, decay)
    resumed = make_scheduler(opt2, decay)
    resumed.load_state_dict(const.state_dict())
    opt2.step()
    resumed.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.7 * 0.9)  # warmup 7/10 x linear decay at 1 of 10


def test_a_resumed_scheduler_takes_the_base_rate_of_its_config():
    """LambdaLR's own state carries base_lrs; a run resumed with a new `lr` must use the new one."""
    from training.config import OptimConfig
    from training.engines import make_optimizer, make_scheduler

    p = [torch.nn.Parameter(torch.zeros(1))]
    old = OptimConfig(lr=5e-4, warmup_steps=1, decay="cosine", decay_start=2, decay_steps=2, min_lr_ratio=0.04)
    opt = make_optimizer(p, old)
    sched = make_scheduler(opt, old)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4 * 0.04)
    new = OptimConfig(lr=1e-4, warmup_steps=1, decay="cosine", decay_start=4, decay_steps=2, min_lr_ratio=0.2)
    opt2 = make_optimizer(p, new)
    resumed = make_scheduler(opt2, new)
    opt2.load_state_dict(opt.state_dict())  # the checkpoint's groups still say 5e-4 / 2e-5
    resumed.load_state_dict(sched.state_dict())
    assert resumed.last_epoch == 4
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-4)  # new base x factor(4) = 1
    opt2.param_groups[0]["lr"] = 123.0  # as when the optimizer state is loaded after the scheduler (ZeRO)
    resumed.sync_lr()
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-4)
    for _ in range(2):
        opt2.step()
        resumed.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(2e-5) and resumed.base_lrs == [1e-4]


def test_a_resumed_constant_rate_takes_the_lr_of_its_config():
    """Without a scheduler the optimizer's saved groups would keep the old rate."""
    from training.config import OptimConfig
    from training.engines import make_optimizer, make_scheduler, restore_config_lr

    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = make_optimizer(p, OptimConfig(lr=5e-4))
    opt.step()
    new = OptimConfig(lr=1e-4)
    opt2 = make_optimizer(p, new)
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["lr"] == 5e-4
    restore_config_lr(opt2, make_scheduler(opt2, new), optimizer_steps=1)
    assert opt2.param_groups[0]["lr"] == 1e-4
    # resumed into a decay: the saved run had no schedule state, the step count comes from the engine
    decay = OptimConfig(lr=1e-4, decay="linear", decay_start=0, decay_steps=4)
    opt3 = make_optimizer(p, decay)
    sched = make_scheduler(opt3, decay)
    opt3.load_state_dict(opt.state_dict())
    sched.load_state_dict(None)
    restore_config_lr(opt3, sched, optimizer_steps=3)
    assert sched.last_epoch == 3 and opt3.param_groups[0]["lr"] == pytest.approx(0.25e-4)
