"""training.loss_window: running means of the loss keys over the last few steps, resumable."""

import math

import pytest

from training.loss_window import LossWindow, is_loss_key


def test_means_cover_the_last_steps_of_each_loss_key_only():
    w = LossWindow(3)
    for step, loss in enumerate([4.0, 1.0, 2.0, 3.0]):
        logs = {"loss": loss, "lr/generator": 1e-4, "stepped": True}
        if step % 2:  # a DMD run logs the generator's loss on its generator steps only
            logs["loss/generator"] = 10.0 * step
        w.push(logs)
    assert w.means() == {"loss_mean": pytest.approx(2.0), "loss/generator_mean": pytest.approx(20.0)}


def test_non_finite_losses_do_not_poison_the_mean():
    w = LossWindow(4)
    for v in (1.0, math.nan, math.inf, 3.0):
        w.push({"loss": v})
    assert w.means() == {"loss_mean": 2.0}
    assert LossWindow(2).means() == {}


def test_state_round_trip_continues_the_same_window():
    a, b = LossWindow(3), LossWindow(3)
    for v in (1.0, 2.0):
        a.push({"loss": v})
    b.load_state_dict(a.state_dict())
    for w in (a, b):
        w.push({"loss": 6.0})
        w.push({"loss": 7.0})
    assert a.means() == b.means() == {"loss_mean": 5.0}


def test_keys_and_sizes():
    assert is_loss_key("loss") and is_loss_key("loss/critic") and not is_loss_key("lossy") and not is_loss_key("lr")
    with pytest.raises(ValueError, match="window size"):
        LossWindow(0)
