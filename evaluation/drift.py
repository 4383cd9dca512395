"""Long-horizon drift of a streamed video, per chunk and first-vs-last, without holding the frames.

    acc = DriftAccumulator(fps=16, chunk_seconds=1.0, quality=BrisqueScorer(), features=Lite0Features())
    for frames in generator.stream_video(...):   # uint8 [n, H, W, 3] batches of any size
        acc.add(frames)
    report = acc.summary()                         # plain JSON types (NaN / undefined -> None)

Chunks and spans are `evaluation.chunks`: chunk k = frames with k c <= t < (k + 1) c, the last one
possibly partial; the first and last spans are the first and last W seconds (W = `window_s`, 5 s as in
the Rolling Forcing paper). Memory is O(chunks + span frames): per chunk a few sums and one feature
centroid, per span the per-frame records of at most round(W fps) frames.

Metrics (frame i, chunk k, span F = first, L = last):

* quality      Q(i) from a no-reference scorer (BRISQUE by default, lower is better; MUSIQ when its
               weights are present). Per chunk the mean over scored frames; the paper's drift is
               Delta Drift = |mean_{i in F} Q(i) - mean_{i in L} Q(i)|   (NaN scores are skipped, counted).
* consistency  f(i) = features of frame i (EfficientNet-Lite0 by default), u(i) = f(i) / ||f(i)||.
               Chunk centroid m_k = mean_{i in k} u(i);  sim_k = cos(m_k, m_0) (1 at k = 0, falls as the
               content drifts from the opening). Similarity vs gap: for a lag of d chunks
               (dt = d c seconds), s(dt) = mean_k cos(m_k, m_{k+d}) over all chunk pairs d apart.
* flicker      VBench temporal flickering: MAE(i) = mean over pixels and channels of |x_i - x_{i-1}|
               (0..255), flicker = (255 - mean MAE) / 255, 1 for a static clip. Per chunk over the pairs
               whose later frame is in the chunk (each consecutive pair counted once); overall over all
               pairs (VBench's per-video score); also over F and L.
* colour       per chunk / span: luma Y = 0.299 R + 0.587 G + 0.114 B (mean, std over all pixels of all
               frames), HSV saturation S = (max - min) / max (0 where max = 0; mean, std), per-channel
               means. Drift = value(L) - value(F) per statistic, and the largest |chunk_k - chunk_0|.
* frechet      Frechet distance between the feature distributions of F and L:
               FD = ||mu_F - mu_L||^2 + tr(S_F + S_L - 2 (S_F^1/2 S_L S_F^1/2)^1/2).
               Small-sample rule: a span holds tens of frames but f is 1280-d, so the sample covariance
               is singular; each S is the Ledoit-Wolf shrinkage estimate (1 - l) C + l (tr C / d) I with
               C the (biased, 1/n) sample covariance and l the Ledoit-Wolf (2004) optimal intensity in
               [0, 1]: full rank whenever the samples vary at all, and -> C as n grows. Both covariances
               are c I outside the span of the samples, so the trace of the matrix square root is computed
               exactly inside that (n_F + n_L)-dimensional span (symmetric eigendecompositions) plus a
               closed form outside it: O(d n^2), not O(d^3). Spans with fewer than 2 feature samples give
               None. FD of two finite samples of one distribution is biased above 0, so compare FDs at
               equal sample counts (the same W, fps and `sample_every`).

`sample_every` scores quality and features on every k-th frame only (by global frame index); flicker
and colour statistics always use every frame.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg

from .chunks import Chunk, Chunker, span_frames, spans

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
COLOUR_STATS = ("luma_mean", "luma_std", "saturation_mean", "saturation_std", "r_mean", "g_mean", "b_mean")
Scorer = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------ pure functions


def as_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 [n, H, W, 3] (a single [H, W, 3] frame becomes n = 1); anything else is an error."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [n, H, W, 3], got {frames.dtype} {frames.shape}")
    return frames


def colour_sums(frames: np.ndarray) -> np.ndarray:
    """Per-frame sufficient statistics, float64 [n, 8]: sum Y, sum Y^2, sum S, sum S^2, sum R, sum G,
    sum B, pixel count (so chunks and spans combine by addition)."""
    x = frames.astype(np.float32)
    y = x @ LUMA
    hi, lo = x.max(axis=-1), x.min(axis=-1)
    s = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1.0), 0.0)
    n = frames.shape[1] * frames.shape[2]
    axes = (1, 2)
    rgb = x.sum(axis=axes, dtype=np.float64)
    return np.column_stack([y.sum(axis=axes, dtype=np.float64), (y * y).sum(axis=axes, dtype=np.float64),
                            s.sum(axis=axes, dtype=np.float64), (s * s).sum(axis=axes, dtype=np.float64),
                            rgb, np.full(len(frames), float(n))])


def colour_stats(sums: np.ndarray) -> dict | None:
    """Means and standard deviations from summed `colour_sums` rows ([8] or [n, 8])."""
    t = np.asarray(sums, dtype=np.float64)
    t = t.sum(axis=0) if t.ndim == 2 else t
    if t.size != 8 or t[7] <= 0:
        return None
    m = t / t[7]
    return {"luma_mean": m[0], "luma_std": math.sqrt(max(m[1] - m[0] ** 2, 0.0)),
            "saturation_mean": m[2], "saturation_std": math.sqrt(max(m[3] - m[2] ** 2, 0.0)),
            "r_mean": m[4], "g_mean": m[5], "b_mean": m[6]}


def consecutive_mae(frames: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """VBench's MAE between each frame and the one before it (0..255): [n] for n frames when the frame
    before the batch is given, else [n - 1]."""
    seq = frames if previous is None else np.concatenate([previous[None], frames])
    if len(seq) < 2:
        return np.zeros(0)
    d = np.abs(seq[1:].astype(np.int16) - seq[:-1].astype(np.int16))
    return d.reshape(len(d), -1).mean(axis=1, dtype=np.float64)


def flicker_score(mean_mae: float | None) -> float | None:
    """VBench temporal flickering: (255 - mean MAE) / 255."""
    return None if mean_mae is None else (255.0 - mean_mae) / 255.0


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(unit_rows(a) @ unit_rows(b))


def similarity_vs_lag(centroids: list[np.ndarray | None], chunk_seconds: float) -> list[dict]:
    """s(dt) = mean_k cos(m_k, m_{k+d}) for every lag d >= 1 with at least one pair of chunks."""
    idx = [k for k, m in enumerate(centroids) if m is not None]
    if len(idx) < 2:
        return []
    u = unit_rows(np.stack([centroids[k] for k in idx]))
    sim = u @ u.T
    pos = np.asarray(idx)
    out = []
    for d in range(1, pos[-1] - pos[0] + 1):
        a, b = np.nonzero(pos[None, :] - pos[:, None] == d)
        if len(a):
            out.append({"lag_chunks": d, "dt_s": d * chunk_seconds, "similarity": float(sim[a, b].mean()),
                        "pairs": int(len(a))})
    return out


@dataclass(frozen=True)
class ShrunkGaussian:
    """A Ledoit-Wolf Gaussian fit kept in factored form: Sigma = a X^T X / n + c I, X = centred samples
    [n, d], a = 1 - l, c = l tr(C) / d (never materialises the d x d matrix)."""

    mean: np.ndarray
    centred: np.ndarray
    a: float
    c: float
    shrinkage: float

    @property
    def trace(self) -> float:
        n, d = self.centred.shape
        return self.a * float((self.centred ** 2).sum()) / n + self.c * d

    def dense(self) -> np.ndarray:
        n, d = self.centred.shape
        return self.a * self.centred.T @ self.centred / n + self.c * np.eye(d)


def ledoit_wolf(x: np.ndarray) -> ShrunkGaussian:
    """Ledoit-Wolf (2004) shrinkage fit of samples x [n, d], n >= 2.

    C = X^T X / n (X centred), m = tr C / d, and with ||.|| the Frobenius norm
    l = min(b, g) / g,  g = ||C - m I||^2 / d,  b = (sum_i ||x_i||^4 / n - ||C||^2) / (n d),
    Sigma = (1 - l) C + l m I.  ||C||^2 = ||X X^T||^2 / n^2 is computed on the n x n Gram matrix.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {n}")
    mu = x.mean(axis=0)
    xc = x - mu
    sq = (xc * xc).sum(axis=1)
    tr = float(sq.sum()) / n
    m = tr / d
    gram = xc @ xc.T
    fro2 = float((gram * gram).sum()) / (n * n)
    gamma = (fro2 - 2 * m * tr + d * m * m) / d
    beta = (float((sq * sq).sum()) / n - fro2) / (n * d)
    shrink = 0.0 if gamma <= 0 else min(max(beta, 0.0), gamma) / gamma
    return ShrunkGaussian(mean=mu, centred=xc, a=1.0 - shrink, c=shrink * m, shrinkage=float(shrink))


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_gaussians(g1: ShrunkGaussian, g2: ShrunkGaussian) -> float:
    """FD of two factored Gaussians, exactly, in the subspace the samples span.

    Both covariances act as c_i I on the complement of V = span(samples of both) (dim d - r), so
    tr (S1^1/2 S2 S1^1/2)^1/2 = tr (A1^1/2 A2 A1^1/2)^1/2 + (d - r) sqrt(c1 c2), A_i = Q^T S_i Q
    with Q an orthonormal basis of V: O(d r^2) instead of O(d^3).
    """
    x1, x2 = g1.centred, g2.centred
    d = x1.shape[1]
    if len(x1) + len(x2) < d:
        q, _ = np.linalg.qr(np.concatenate([x1, x2]).T)  # [d, r], orthonormal, spans both sample sets
    else:
        q = np.eye(d)
    r = q.shape[1]
    p1, p2 = x1 @ q, x2 @ q
    a1 = g1.a * p1.T @ p1 / len(x1) + g1.c * np.eye(r)
    a2 = g2.a * p2.T @ p2 / len(x2) + g2.c * np.eye(r)
    s1 = _sqrt_psd(a1)
    cross = float(np.sqrt(np.clip(linalg.eigvalsh(s1 @ a2 @ s1), 0, None)).sum())
    cross += (d - r) * math.sqrt(g1.c * g2.c)
    fd = float(((g1.mean - g2.mean) ** 2).sum()) + g1.trace + g2.trace - 2 * cross
    return max(fd, 0.0)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> dict | None:
    """Frechet distance between Ledoit-Wolf Gaussians fitted to samples x [n1, d] and y [n2, d]
    (None when either has fewer than 2 samples)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or len(y) < 2:
        return None
    g1, g2 = ledoit_wolf(x), ledoit_wolf(y)
    return {"distance": frechet_gaussians(g1, g2), "n_first": int(len(x)), "n_last": int(len(y)),
            "dim": int(x.shape[1]), "shrinkage_first": g1.shrinkage, "shrinkage_last": g2.shrinkage,
            "covariance": "ledoit-wolf"}


def jsonable(x):
    """numpy scalars/arrays -> Python types; NaN and inf -> None (strict JSON has neither)."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _nanmean(values) -> float | None:
    v = np.asarray(list(values), dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


# ------------------------------------------------------------------------------------- streaming


@dataclass
class _ChunkAcc:
    """Running sums of one chunk."""

    colour: np.ndarray = field(default_factory=lambda: np.zeros(8))
    mae_sum: float = 0.0
    mae_pairs: int = 0
    quality: list[float] = field(default_factory=list)  # one scalar per scored frame (bounded by the chunk)
    feat_sum: np.ndarray | None = None
    feat_n: int = 0


class _Span:
    """Per-frame records of the first s frames and of the latest s frames seen so far."""

    def __init__(self, s: int):
        self.s = s
        self.first: list = []
        self.last: deque = deque()

    def add(self, index: int, value) -> None:
        if index < self.s:
            self.first.append(value)
        self.last.append((index, value))

    def prune(self, num_frames: int) -> None:
        while self.last and self.last[0][0] < num_frames - self.s:
            self.last.popleft()

    def last_values(self) -> list:
        return [v for _, v in self.last]


class DriftAccumulator:
    """Streaming drift metrics; see the module docstring. `quality` and `features` are callables
    frames [n, H, W, 3] uint8 -> [n] scores / [n, d] features (None skips that metric); they may carry
    `name` and `higher_is_better` attributes, which the summary reports."""

    def __init__(self, fps: float, chunk_seconds: float = 1.0, quality: Scorer | None = None,
                 features: Scorer | None = None, window_s: float = 5.0, sample_every: int = 1):
        if sample_every < 1:
            raise ValueError(f"sample_every must be >= 1, got {sample_every}")
        self.fps, self.chunk_seconds, self.window_s = float(fps), float(chunk_seconds), float(window_s)
        self.chunker = Chunker(fps, chunk_seconds)
        self.quality, self.features, self.sample_every = quality, features, int(sample_every)
        s = span_frames(fps, window_s)
        self._spans = {name: _Span(s) for name in ("colour", "mae", "quality", "features")}
        self._open: dict[int, _ChunkAcc] = {}
        self._done: list[dict] = []
        self._centroids: list[np.ndarray | None] = []
        self._first_centroid: np.ndarray | None = None
        self._mae_total, self._pairs_total = 0.0, 0
        self._quality_nan = 0
        self._previous: np.ndarray | None = None
        self._size: tuple[int, int] | None = None

    @property
    def num_frames(self) -> int:
        return self.chunker.num_frames

    def add(self, frames: np.ndarray) -> None:
        """Consume the next frames of the stream (uint8 [n, H, W, 3] or one [H, W, 3])."""
        frames = as_frames(frames)
        if not len(frames):
            return
        if self._size is None:
            self._size = frames.shape[1:3]
        elif frames.shape[1:3] != self._size:
            raise ValueError(f"frame size changed mid-stream: {self._size} -> {frames.shape[1:3]}")
        start = self.num_frames
        colour = colour_sums(frames)
        mae = consecutive_mae(frames, self._previous)  # mae[j] ends at frame start + j (+1 without previous)
        mae_first = start if self._previous is not None else start + 1
        self._previous = frames[-1].copy()
        sampled = [j for j in range(len(frames)) if (start + j) % self.sample_every == 0]
        scores = self.quality(frames[sampled]) if self.quality is not None and sampled else None
        feats = self.features(frames[sampled]) if self.features is not None and sampled else None
        per_frame_q = dict(zip(sampled, np.asarray(scores, dtype=np.float64))) if scores is not None else {}
        per_frame_f = dict(zip(sampled, np.asarray(feats, dtype=np.float64))) if feats is not None else {}

        for j in range(len(frames)):
            self._spans["colour"].add(start + j, colour[j])
        for j, m in enumerate(mae):
            self._spans["mae"].add(mae_first + j, float(m))
        self._mae_total += float(mae.sum())
        self._pairs_total += len(mae)
        for j, q in per_frame_q.items():
            self._spans["quality"].add(start + j, float(q))
            self._quality_nan += int(not math.isfinite(q))
        for j, f in per_frame_f.items():
            self._spans["features"].add(start + j, f.astype(np.float32))

        for piece in self.chunker.push(len(frames)):
            acc = self._open.setdefault(piece.chunk, _ChunkAcc())
            lo, hi = piece.offset, piece.offset + piece.count
            acc.colour += colour[lo:hi].sum(axis=0)
            pair_lo = max(lo + start - mae_first, 0)  # pairs whose later frame lies in this piece
            pair_hi = hi + start - mae_first
            if pair_hi > pair_lo:
                acc.mae_sum += float(mae[pair_lo:pair_hi].sum())
                acc.mae_pairs += pair_hi - pair_lo
            for j in range(lo, hi):
                if j in per_frame_q:
                    acc.quality.append(float(per_frame_q[j]))
                if j in per_frame_f:
                    u = unit_rows(per_frame_f[j])
                    acc.feat_sum = u if acc.feat_sum is None else acc.feat_sum + u
                    acc.feat_n += 1
            if piece.completes:
                self._close(self.chunker.chunk(piece.chunk), self._open.pop(piece.chunk))
        for span in self._spans.values():
            span.prune(self.num_frames)

    def _record(self, chunk: Chunk, acc: _ChunkAcc) -> tuple[dict, np.ndarray | None]:
        centroid = acc.feat_sum / acc.feat_n if acc.feat_n else None
        first = self._first_centroid if self._first_centroid is not None else (centroid if chunk.index == 0 else None)
        rec = chunk.as_dict()
        rec["quality"] = _nanmean(acc.quality)
        rec["quality_frames"] = len(acc.quality)
        rec["similarity_to_first"] = cosine(centroid, first) if centroid is not None and first is not None else None
        rec["feature_frames"] = acc.feat_n
        rec["mean_abs_diff"] = acc.mae_sum / acc.mae_pairs if acc.mae_pairs else None
        rec["flicker"] = flicker_score(rec["mean_abs_diff"])
        rec["colour"] = colour_stats(acc.colour)
        return rec, centroid

    def _close(self, chunk: Chunk, acc: _ChunkAcc) -> None:
        rec, centroid = self._record(chunk, acc)
        if chunk.index == 0:
            self._first_centroid = centroid
        self._done.append(rec)
        self._centroids.append(centroid)

    def summary(self) -> dict:
        """Per-chunk records and first-vs-last drift; safe to call mid-stream (nothing is consumed)."""
        chunks, centroids = list(self._done), list(self._centroids)
        k = self.chunker.open_chunk()
        if k is not None:
            rec, centroid = self._record(self.chunker.chunk(k), self._open[k])
            chunks.append(rec)
            centroids.append(centroid)
        n = self.num_frames
        sp = self._spans
        out = {"fps": self.fps, "chunk_seconds": self.chunk_seconds, "num_frames": n,
               "duration_s": n / self.fps, "num_chunks": len(chunks), "sample_every": self.sample_every,
               "spans": spans(n, self.fps, self.window_s), "chunks": chunks}

        mae_f, mae_l = _nanmean(sp["mae"].first), _nanmean(sp["mae"].last_values())
        overall = self._mae_total / self._pairs_total if self._pairs_total else None
        out["flicker"] = {"score": flicker_score(overall), "mean_abs_diff": overall, "pairs": self._pairs_total,
                          "first": flicker_score(mae_f), "last": flicker_score(mae_l)}

        cf, cl = colour_stats(np.asarray(sp["colour"].first)), colour_stats(np.asarray(sp["colour"].last_values()))
        c0 = chunks[0]["colour"] if chunks else None
        out["colour"] = {
            "first": cf, "last": cl,
            "drift": {s: cl[s] - cf[s] for s in COLOUR_STATS} if cf and cl else None,
            "max_abs_deviation_from_first_chunk": (
                {s: max(abs(c["colour"][s] - c0[s]) for c in chunks) for s in COLOUR_STATS} if c0 else None),
        }

        if self.quality is not None:
            qf, ql = _nanmean(sp["quality"].first), _nanmean(sp["quality"].last_values())
            out["quality"] = {
                "name": getattr(self.quality, "name", type(self.quality).__name__),
                "higher_is_better": getattr(self.quality, "higher_is_better", None),
                "first": qf, "last": ql, "change": ql - qf if qf is not None and ql is not None else None,
                "delta_drift": abs(ql - qf) if qf is not None and ql is not None else None,
                "frames_first": len(sp["quality"].first), "frames_last": len(sp["quality"].last),
                "undefined_frames": self._quality_nan,
            }
        else:
            out["quality"] = None

        if self.features is not None:
            sims = [c["similarity_to_first"] for c in chunks]
            defined = [s for s in sims if s is not None]
            ff, fl = sp["features"].first, sp["features"].last_values()
            out["consistency"] = {
                "features": getattr(self.features, "name", type(self.features).__name__),
                "similarity_to_first": sims,
                "last_to_first": defined[-1] if defined else None,
                "min_to_first": min(defined) if defined else None,
                "similarity_vs_dt": similarity_vs_lag(centroids, self.chunk_seconds),
            }
            out["frechet"] = frechet_distance(np.stack(ff), np.stack(fl)) if len(ff) >= 2 and len(fl) >= 2 else None
        else:
            out["consistency"] = None
            out["frechet"] = None
        return jsonable(out)


def drift_of_frames(frames: np.ndarray, fps: float, chunk_seconds: float = 1.0, **kwargs) -> dict:
    """One-shot convenience: the summary of a whole in-memory clip (fed in one batch)."""
    acc = DriftAccumulator(fps, chunk_seconds, **kwargs)
    acc.add(frames)
    return acc.summary()


__all__ = [
    "COLOUR_STATS", "DriftAccumulator", "colour_stats", "colour_sums", "consecutive_mae", "cosine",
    "ShrunkGaussian", "drift_of_frames", "flicker_score", "frechet_distance", "frechet_gaussians", "jsonable",
    "ledoit_wolf", "similarity_vs_lag",
]
