"""Fréchet distances to a reference with paired bootstrap errors, and the reference's own floor.

A Fréchet distance over a few dozen clips has no closed-form standard error, and its size alone does
not say how close is close: two sets of the *same* model's clips, drawn with different noise seeds,
are already some distance apart. So the ablation (bench/ablation.py) reports, for models whose clips
are paired stream by stream with the reference's (same prompt, same seed, same order):

    point[m]      FD(ref, m) over all streams
    resampled[m]  FD(ref[i], m[i]) for `resamples` draws i of the stream indices with replacement —
                  the same i for every model, so differences between models are paired
    se[m]         std of resampled[m]
    gap(a, b)     point[a] - point[b] with se = std(resampled[a] - resampled[b]) and the share of
                  draws in which a is the closer one

and a floor: the reference model's own clips from other noise seeds, scored like any model. A student
whose gap to the floor is within its error samples as closely to the reference as the reference does
to itself, and no student can be shown closer.

Features are per stream [frames, d] (EfficientNet-Lite0, evaluation/features.py); a draw concatenates
the drawn streams' frames. A bootstrap of a biased statistic is biased too (duplicated streams shrink
the fitted covariance), so `resampled` means sit above `point`; the paired gaps are what to read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .drift import ShrunkGaussian, frechet_gaussians, ledoit_wolf


def _stack(streams: list[np.ndarray], idx: np.ndarray | None) -> np.ndarray | None:
    """The frames of the (drawn) non-empty streams, concatenated; None when fewer than 2."""
    picked = [c for c in (streams if idx is None else (streams[i] for i in idx)) if len(c)]
    if not picked:
        return None
    frames = np.concatenate(picked).astype(np.float64)
    return frames if len(frames) >= 2 else None


def _fds(reference: list[np.ndarray], models: dict[str, list[np.ndarray]], names, idx=None) -> dict:
    """{name: FD(reference, model) or None} over the streams `idx` (None: all), the reference's
    Gaussian fitted once for all models."""
    ref = _stack(reference, idx)
    g_ref: ShrunkGaussian | None = None if ref is None else ledoit_wolf(ref)
    out = {}
    for name in names:
        got = _stack(models[name], idx)
        out[name] = None if g_ref is None or got is None else frechet_gaussians(g_ref, ledoit_wolf(got))
    return out


@dataclass
class FrechetBootstrap:
    """Point distances and paired bootstrap draws of several models to one reference (module doc)."""

    point: dict[str, float | None]
    resampled: dict[str, np.ndarray] = field(default_factory=dict)  # [resamples] per bootstrapped model
    streams: int = 0

    def stat(self, name: str) -> dict:
        """{"mean": point, "se": bootstrap std (None without draws), "n": streams}."""
        draws = self.resampled.get(name)
        se = float(np.std(draws)) if draws is not None and len(draws) > 1 else None
        return {"mean": self.point.get(name), "se": se, "n": self.streams}

    def gap(self, a: str, b: str) -> dict:
        """point[a] - point[b], its paired bootstrap std and the share of draws where a is closer."""
        pa, pb = self.point.get(a), self.point.get(b)
        out: dict = {"mean": None if pa is None or pb is None else pa - pb, "se": None,
                     "resamples": 0, "lower_share": None}
        ra, rb = self.resampled.get(a), self.resampled.get(b)
        if ra is not None and rb is not None and len(ra) > 1:
            diff = ra - rb
            out.update(se=float(np.std(diff)), resamples=int(len(diff)), lower_share=float(np.mean(diff < 0)))
        return out


def frechet_bootstrap(reference: list[np.ndarray], models: dict[str, list[np.ndarray]], resamples: int = 0,
                      bootstrap: tuple[str, ...] | None = None, seed: int = 0) -> FrechetBootstrap:
    """FD of every model's clips to `reference`'s; paired bootstrap draws for the models in `bootstrap`
    (None: all). Each model's list pairs with `reference` stream by stream (equal lengths)."""
    if resamples < 0:
        raise ValueError(f"resamples must be >= 0, got {resamples}")
    for name, clips in models.items():
        if len(clips) != len(reference):
            raise ValueError(f"{name}: {len(clips)} streams, the reference has {len(reference)}; "
                             "the bootstrap pairs them stream by stream")
    result = FrechetBootstrap(point=_fds(reference, models, list(models)), streams=len(reference))
    chosen = [n for n in models if bootstrap is None or n in bootstrap]
    if resamples < 2 or not chosen or not reference:
        return result
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {n: [] for n in chosen}
    for _ in range(resamples):
        idx = rng.integers(0, len(reference), len(reference))
        values = _fds(reference, models, chosen, idx)
        if any(v is None for v in values.values()):
            continue  # a draw of only empty clips: skipped for every model, so the pairing holds
        for n, v in values.items():
            draws[n].append(v)
    result.resampled = {n: np.asarray(v) for n, v in draws.items()}
    return result
