"""bench/drift_comparison.py: its pure helpers and the chunk-by-chunk teacher extension (fake model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[2] / "bench" / "drift_comparison.py"
spec = importlib.util.spec_from_file_location("drift_comparison", PATH)
dc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dc)


def test_training_and_stream_seconds():
    # demo geometry: 12 blocks x 3 latent frames, pixel codec 1:1, 16 fps -> 2.25 s; 10x -> 22.5 s
    train = dc.training_seconds(12, 3, lambda n: n, 16)
    assert train == pytest.approx(2.25)
    assert dc.stream_seconds(train, 10) == pytest.approx(22.5)
    assert dc.stream_seconds(0.5, 10) == dc.MIN_SECONDS  # never shorter than two 5 s windows
    # a causal VAE decodes 1 + 4 (n - 1) frames
    assert dc.training_seconds(3, 3, lambda n: 1 + 4 * (n - 1), 16) == pytest.approx(33 / 16)
    with pytest.raises(ValueError):
        dc.stream_seconds(1.0, 0)


def test_teacher_chunk_plan():
    assert dc.teacher_chunk_plan(6, 6, 2) == [(0, 6)]
    assert dc.teacher_chunk_plan(14, 6, 2) == [(0, 6), (6, 4), (10, 4)]
    assert dc.teacher_chunk_plan(11, 6, 2) == [(0, 6), (6, 4), (10, 1)]
    assert dc.teacher_chunk_plan(3, 6, 2) == [(0, 3)]
    assert dc.teacher_chunk_plan(12, 6, 0) == [(0, 6), (6, 6)]
    plan = dc.teacher_chunk_plan(120, 6, 2)
    assert sum(c for _, c in plan) == 120 and all(a + c == b for (a, c), (b, _) in zip(plan, plan[1:]))
    for bad in ((10, 6, 6), (10, 6, -1), (0, 6, 2)):
        with pytest.raises(ValueError):
            dc.teacher_chunk_plan(*bad)


def test_drift_ratio():
    assert dc.drift_ratio(1.0, 4.0) == 0.25
    assert dc.drift_ratio(1.0, 0.0) is None
    assert dc.drift_ratio(None, 1.0) is None
    assert dc.drift_ratio(float("nan"), 1.0) is None


def test_select_prompts(tmp_path):
    conf = ["a", "b", "c"]
    assert dc.select_prompts(None, conf) == conf
    assert dc.select_prompts("2", conf) == ["a", "b"]
    with pytest.raises(ValueError):
        dc.select_prompts("4", conf)
    f = tmp_path / "p.txt"
    f.write_text("x\n# skipped\ny\n")
    assert dc.select_prompts(str(f), conf) == ["x", "y"]


class _Recorder(torch.nn.Module):
    """A fake teacher: zero flow (Euler steps leave x unchanged); records every input."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[tuple[torch.Tensor, float]] = []

    def forward(self, x, t, _text):
        self.calls.append((x.clone(), float(t[0])))
        return torch.zeros_like(x)


def test_teacher_extension_holds_the_prefix_on_its_flow_path():
    model, steps, fpb, clip, prefix = _Recorder(), 5, 2, 4, 2
    shape = (1, fpb, 3, 2, 2)
    gen = torch.Generator().manual_seed(0)
    blocks = list(dc.teacher_extended_latents(model, None, None, shape, 8, clip, prefix, steps, 3.0, 1.0, gen))
    assert [b for b, _ in blocks] == list(range(8)) and all(x.shape == shape for _, x in blocks)
    assert len(model.calls) == 3 * steps  # clips: 4 new blocks, then 2 + 2 new
    # with zero flow a clip's output is its initial noise; clip 1's prefix must be clip 0's last 2 blocks
    known = torch.cat([x for b, x in blocks if b in (2, 3)], dim=1)
    p = prefix * fpb
    eps = []
    for x, t in model.calls[steps:2 * steps]:
        sigma = t / 1000
        if sigma < 1:
            eps.append((x[:, :p] - (1 - sigma) * known) / sigma)
        else:
            eps.append(x[:, :p])  # sigma = 1: pure noise
    for e in eps[1:]:  # one fixed eps per clip: the prefix lies on the straight path to `known`
        torch.testing.assert_close(e, eps[0], rtol=1e-4, atol=1e-4)
    # same seed, same stream
    again = list(dc.teacher_extended_latents(_Recorder(), None, None, shape, 8, clip, prefix, steps, 3.0, 1.0,
                                             torch.Generator().manual_seed(0)))
    for (_, a), (_, b) in zip(blocks, again):
        torch.testing.assert_close(a, b)


def test_noise_se():
    assert dc.noise_se([1.0], 5) is None
    assert dc.noise_se([1.0, 1.0, 1.0], 5) == 0.0
    # std of [0, 2] is sqrt(2); sqrt(2) * sqrt(2 / 2) = sqrt(2)
    assert dc.noise_se([0.0, 2.0, None, float("nan")], 2) == pytest.approx(2 ** 0.5)
