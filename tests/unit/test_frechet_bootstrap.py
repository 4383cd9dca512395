"""Fréchet distances with paired bootstrap errors (evaluation/frechet_bootstrap.py) on synthetic features."""

import numpy as np
import pytest

from evaluation.frechet_bootstrap import frechet_bootstrap


def _streams(rng, n=12, frames=6, d=4, shift=0.0):
    return [rng.normal(size=(frames, d)) + shift for _ in range(n)]


def test_a_shifted_model_is_further_than_a_second_draw_of_the_reference():
    rng = np.random.default_rng(0)
    ref = _streams(rng)
    fb = frechet_bootstrap(ref, {"same": _streams(rng), "shifted": _streams(rng, shift=1.5), "ref": ref},
                           resamples=16, seed=1)
    assert fb.point["ref"] == pytest.approx(0.0, abs=1e-9)
    assert fb.point["same"] < fb.point["shifted"]
    gap = fb.gap("same", "shifted")
    assert gap["mean"] == pytest.approx(fb.point["same"] - fb.point["shifted"])
    assert gap["resamples"] == 16 and gap["lower_share"] == 1.0 and gap["se"] > 0
    assert fb.stat("shifted") == {"mean": fb.point["shifted"], "se": pytest.approx(np.std(fb.resampled["shifted"])),
                                  "n": 12}
    # a model against itself: the paired difference is exactly zero in every draw
    assert fb.gap("ref", "ref")["se"] == 0.0


def test_only_the_chosen_models_are_bootstrapped_and_zero_draws_give_points_only():
    rng = np.random.default_rng(0)
    ref, a, b = _streams(rng), _streams(rng), _streams(rng, shift=0.5)
    fb = frechet_bootstrap(ref, {"a": a, "b": b}, resamples=4, bootstrap=("a",))
    assert fb.stat("a")["se"] is not None and fb.stat("b")["se"] is None
    assert fb.gap("a", "b") == {"mean": fb.point["a"] - fb.point["b"], "se": None, "resamples": 0, "lower_share": None}
    none = frechet_bootstrap(ref, {"a": a}, resamples=0)
    assert none.resampled == {} and none.stat("a")["se"] is None and none.point["a"] == pytest.approx(fb.point["a"])


def test_unpaired_streams_and_negative_draws_are_errors():
    rng = np.random.default_rng(0)
    ref = _streams(rng)
    with pytest.raises(ValueError, match="pairs them stream by stream"):
        frechet_bootstrap(ref, {"short": ref[:-1]})
    with pytest.raises(ValueError, match="resamples"):
        frechet_bootstrap(ref, {"a": ref}, resamples=-1)


def test_empty_clips_are_left_out():
    rng = np.random.default_rng(0)
    ref = _streams(rng, n=4)
    model = [np.zeros((0, 4))] + _streams(rng, n=3)
    fb = frechet_bootstrap(ref, {"m": model}, resamples=5)
    assert fb.point["m"] is not None and len(fb.resampled["m"]) <= 5
