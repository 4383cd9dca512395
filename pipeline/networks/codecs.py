"""Latent codecs: one interface between pixel video and the latents the generator works in.

Layout everywhere in the project: video [B, F, 3, H, W] in [-1, 1], latent [B, F', C, H/s, W/s]
(frames before channels). Codecs are frozen (no trainable parameters take gradients).

- `PixelCodec`: lossless, weightless space/time-to-channel folding; fast tests and debugging.
- `WanVAECodec`: the Wan2.1 causal 3-D VAE (8x spatial, 4x causal temporal, 16 channels).

`build_codec(cfg)` maps `CodecConfig.kind` to a codec.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.config import CodecConfig
from pipeline.networks.wan_vae import WanVAE, WanVAEStreamDecoder, load_wan_vae


def _check_video(video: Tensor) -> None:
    if video.dim() != 5 or video.shape[2] != 3:
        raise ValueError(f"expected video [B, F, 3, H, W], got {tuple(video.shape)}")


class StreamDecoder(abc.ABC):
    """Decodes a latent clip block by block; outputs concatenate to the whole-clip decode."""

    @abc.abstractmethod
    def decode(self, latent_block: Tensor) -> Tensor:
        """latent [B, f, C, h, w] (the clip's next f latent frames) -> video [B, n, 3, H, W] in [-1, 1]."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Start a new clip."""


class LatentCodec(nn.Module, abc.ABC):
    """Video <-> latent codec. Subclasses set `latent_channels`, `spatial_factor`, `temporal_factor`."""

    latent_channels: int
    spatial_factor: int
    temporal_factor: int
    # True when a clip's first latent encodes its first frame alone (causal time compression, the
    # Wan VAE): a teacher trained on such clips has never seen a clip open on a mid-video latent.
    first_latent_is_image: bool = False

    @abc.abstractmethod
    def latent_frames(self, video_frames: int) -> int:
        """Latent frames `encode` returns for `video_frames` frames (ValueError if not encodable)."""

    @abc.abstractmethod
    def video_frames(self, latent_frames: int) -> int:
        """Video frames `decode` returns for `latent_frames` latent frames."""

    @abc.abstractmethod
    def encode(self, video: Tensor) -> Tensor:
        """video [B, F, 3, H, W] in [-1, 1] -> latent [B, F', C, H/s, W/s]."""

    @abc.abstractmethod
    def decode(self, latent: Tensor) -> Tensor:
        """latent [B, F', C, h, w] -> video [B, F, 3, h*s, w*s] clamped to [-1, 1]."""

    @abc.abstractmethod
    def stream_decoder(self) -> StreamDecoder:
        """A fresh block-by-block decoder for one clip."""

    def _check_hw(self, video: Tensor) -> None:
        s = self.spatial_factor
        if video.shape[-2] % s or video.shape[-1] % s:
            raise ValueError(f"{type(self).__name__}: height and width must be divisible by {s}, "
                             f"got {tuple(video.shape[-2:])}")


class PixelCodec(LatentCodec):
    """Lossless folding of t consecutive frames and s x s pixels into C = 3 t s^2 channels.

    Channel order within a latent frame: (frame-in-group, rgb, dy, dx) -- pixel_unshuffle's.
    """

    def __init__(self, spatial_factor: int = 4, temporal_factor: int = 1):
        super().__init__()
        if spatial_factor < 1 or temporal_factor < 1:
            raise ValueError(f"factors must be >= 1, got spatial {spatial_factor}, temporal {temporal_factor}")
        self.spatial_factor = spatial_factor
        self.temporal_factor = temporal_factor
        self.latent_channels = 3 * temporal_factor * spatial_factor**2

    def latent_frames(self, video_frames: int) -> int:
        t = self.temporal_factor
        if video_frames < 0 or video_frames % t:
            raise ValueError(f"PixelCodec with temporal_factor={t} needs a frame count divisible by {t}, "
                             f"got {video_frames}")
        return video_frames // t

    def video_frames(self, latent_frames: int) -> int:
        if latent_frames < 0:
            raise ValueError(f"latent_frames must be >= 0, got {latent_frames}")
        return latent_frames * self.temporal_factor

    def encode(self, video: Tensor) -> Tensor:
        _check_video(video)
        self._check_hw(video)
        b, f, _, h, w = video.shape
        n = self.latent_frames(f)
        grouped = video.reshape(b, n, self.temporal_factor * 3, h, w)
        return F.pixel_unshuffle(grouped, self.spatial_factor)

    def decode(self, latent: Tensor) -> Tensor:
        if latent.dim() != 5 or latent.shape[2] != self.latent_channels:
            raise ValueError(f"expected latent [B, F, {self.latent_channels}, h, w], got {tuple(latent.shape)}")
        b, n = latent.shape[:2]
        video = F.pixel_shuffle(latent, self.spatial_factor)
        return video.reshape(b, n * self.temporal_factor, 3, *video.shape[-2:]).clamp(-1, 1)

    def stream_decoder(self) -> StreamDecoder:
        return _StatelessStreamDecoder(self.decode)


class _StatelessStreamDecoder(StreamDecoder):
    """For codecs whose latent frames decode independently of each other."""

    def __init__(self, decode: Callable[[Tensor], Tensor]):
        self._decode = decode

    def decode(self, latent_block: Tensor) -> Tensor:
        return self._decode(latent_block)

    def reset(self) -> None:
        pass


class WanVAECodec(LatentCodec):
    """Wan2.1 VAE: video frames 1 + 4 (n - 1) <-> n latent frames of z_dim channels at 1/8 size.

    Latents are Wan's normalised posterior means ((mu - mean) / std), as the Wan DiT expects.
    Random init when `vae_path` is None (tests, shape plumbing), else strict loading.
    """

    first_latent_is_image = True

    def __init__(self, dim: int = 96, z_dim: int = 16, vae_path: str | None = None,
                 frames_per_call: int = 1):
        super().__init__()
        self.vae = load_wan_vae(vae_path, dim=dim, z_dim=z_dim) if vae_path else WanVAE(dim=dim, z_dim=z_dim)
        self.vae.eval().requires_grad_(False)
        self.frames_per_call = frames_per_call
        self.latent_channels = z_dim
        self.spatial_factor = self.vae.spatial_factor
        self.temporal_factor = self.vae.temporal_factor

    def train(self, mode: bool = True) -> WanVAECodec:
        # Frozen: the VAE has no train-time behaviour worth switching to (dropout is 0 anyway).
        super().train(mode)
        self.vae.eval()
        return self

    def latent_frames(self, video_frames: int) -> int:
        return self.vae.latent_frames(video_frames)

    def video_frames(self, latent_frames: int) -> int:
        return self.vae.video_frames(latent_frames)

    def _dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def encode(self, video: Tensor) -> Tensor:
        _check_video(video)
        self._check_hw(video)
        latent = self.vae.encode(video.to(self._dtype()).transpose(1, 2))
        return latent.transpose(1, 2)

    def decode(self, latent: Tensor) -> Tensor:
        stream = self.stream_decoder()
        return stream.decode(latent)

    def stream_decoder(self) -> StreamDecoder:
        return _WanStreamDecoder(self.vae.stream_decoder(self.frames_per_call), self._dtype())


class _WanStreamDecoder(StreamDecoder):
    """First block: 1 + 4 (f - 1) frames; later blocks: 4 f frames."""

    def __init__(self, inner: WanVAEStreamDecoder, dtype: torch.dtype):
        self.inner = inner
        self.dtype = dtype

    def decode(self, latent_block: Tensor) -> Tensor:
        if latent_block.dim() != 5:
            raise ValueError(f"expected latent [B, f, C, h, w], got {tuple(latent_block.shape)}")
        video = self.inner.decode(latent_block.to(self.dtype).transpose(1, 2))
        return video.transpose(1, 2).clamp(-1, 1)

    def reset(self) -> None:
        self.inner.reset()


CODECS: dict[str, Callable[[CodecConfig], LatentCodec]] = {
    "pixel": lambda cfg: PixelCodec(cfg.spatial_factor, cfg.temporal_factor),
    "wan_vae": lambda cfg: WanVAECodec(cfg.vae_dim, cfg.z_dim, cfg.vae_path),
}


def build_codec(cfg: CodecConfig) -> LatentCodec:
    """The codec named by `cfg.kind`, after `cfg.validate()` (e.g. wan_vae needs factors 8 and 4)."""
    try:
        factory = CODECS[cfg.kind]
    except KeyError:
        raise ValueError(f"unknown codec kind {cfg.kind!r}; valid: {', '.join(sorted(CODECS))}") from None
    # The factors in cfg drive geometry elsewhere (latent sizes), so they must agree with the codec.
    cfg.validate()
    return factory(cfg)


__all__ = ["CODECS", "LatentCodec", "PixelCodec", "StreamDecoder", "WanVAECodec", "build_codec"]
