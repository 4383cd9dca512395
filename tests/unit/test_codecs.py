"""Latent codec interface: PixelCodec, WanVAECodec and build_codec."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import CodecConfig
from pipeline.networks.codecs import LatentCodec, PixelCodec, WanVAECodec, build_codec


def _video(frames: int, h: int = 16, w: int = 24, b: int = 2) -> torch.Tensor:
    return torch.rand(b, frames, 3, h, w, generator=torch.Generator().manual_seed(frames)) * 2 - 1


@pytest.mark.parametrize("s,t", [(4, 1), (2, 2), (1, 3), (8, 4)])
def test_pixel_codec_exact_round_trip(s, t):
    codec = PixelCodec(spatial_factor=s, temporal_factor=t)
    video = _video(12, h=16, w=24)
    latent = codec.encode(video)
    assert latent.shape == (2, 12 // t, 3 * t * s * s, 16 // s, 24 // s)
    assert codec.latent_channels == latent.shape[2]
    assert codec.latent_frames(12) == 12 // t and codec.video_frames(12 // t) == 12
    assert torch.equal(codec.decode(latent), video)


def test_pixel_codec_channels_hold_local_pixels():
    """Latent frame 0 holds only video frames 0..t-1 and latent pixel (0, 0) only the top-left s x s patch."""
    codec = PixelCodec(spatial_factor=2, temporal_factor=2)
    video = torch.zeros(1, 4, 3, 4, 4)
    video[0, 1, :, :2, :2] = 1
    latent = codec.encode(video)
    assert latent[0, 0, :, 0, 0].abs().sum() == 3 * 4
    assert latent.abs().sum() == 3 * 4


def test_pixel_codec_decode_clamps():
    codec = PixelCodec(2, 1)
    latent = torch.full((1, 1, 12, 2, 2), 3.0)
    assert codec.decode(latent).max() == 1.0


def test_pixel_codec_bad_shapes_raise():
    codec = PixelCodec(spatial_factor=4, temporal_factor=2)
    with pytest.raises(ValueError, match="divisible by 2"):
        codec.encode(_video(5))
    with pytest.raises(ValueError, match="divisible by 2"):
        codec.latent_frames(7)
    with pytest.raises(ValueError, match="divisible by 4"):
        codec.encode(_video(4, h=18))
    with pytest.raises(ValueError, match="3, H, W"):
        codec.encode(torch.zeros(1, 4, 4, 16, 16))


def test_pixel_stream_decoder_equals_whole_decode():
    codec = PixelCodec(spatial_factor=2, temporal_factor=2)
    latent = codec.encode(_video(12))
    stream = codec.stream_decoder()
    parts = [stream.decode(latent[:, a:b]) for a, b in ((0, 1), (1, 3), (3, 6))]
    assert [p.shape[1] for p in parts] == [2, 4, 6]
    assert torch.equal(torch.cat(parts, dim=1), codec.decode(latent))
    stream.reset()


@pytest.fixture(scope="module")
def wan_codec() -> WanVAECodec:
    torch.manual_seed(0)
    codec = WanVAECodec(dim=8, z_dim=4)
    # Non-trivial weights in the zero-initialised attention output projections too.
    with torch.no_grad():
        for name, p in codec.named_parameters():
            if name.endswith("proj.weight"):
                p.normal_(0, 0.1)
    return codec


def test_wan_codec_shapes_and_frame_counts(wan_codec):
    assert isinstance(wan_codec, LatentCodec)
    assert (wan_codec.latent_channels, wan_codec.spatial_factor, wan_codec.temporal_factor) == (4, 8, 4)
    assert wan_codec.latent_frames(9) == 3 and wan_codec.video_frames(3) == 9
    assert wan_codec.video_frames(1) == 1 and wan_codec.video_frames(0) == 0
    with pytest.raises(ValueError):
        wan_codec.latent_frames(8)
    with torch.no_grad():
        latent = wan_codec.encode(_video(9, h=16, w=32))
        assert latent.shape == (2, 3, 4, 2, 4)
        video = wan_codec.decode(latent)
    assert video.shape == (2, 9, 3, 16, 32)
    assert video.min() >= -1 and video.max() <= 1
    assert not any(p.requires_grad for p in wan_codec.parameters())


def test_wan_codec_rejects_bad_frame_count(wan_codec):
    with pytest.raises(ValueError, match="1 \\+ 4 k"):
        wan_codec.encode(_video(8))


@torch.no_grad()
def test_wan_codec_stream_decoder_equals_whole_decode(wan_codec):
    latent = torch.randn(1, 6, 4, 2, 2)
    whole = wan_codec.decode(latent)
    stream = wan_codec.stream_decoder()
    parts = [stream.decode(latent[:, a:b]) for a, b in ((0, 1), (1, 3), (3, 6))]
    assert [p.shape[1] for p in parts] == [1, 8, 12]
    got = torch.cat(parts, dim=1)
    assert got.shape == whole.shape == (1, 21, 3, 16, 16)
    assert (got - whole).abs().max() <= 1e-5
    stream.reset()
    first = stream.decode(latent[:, :2])  # a new clip: its first block again yields 1 + 4 (f - 1) frames
    assert first.shape[1] == 5 and (first - whole[:, :5]).abs().max() <= 1e-5
    assert stream.decode(latent[:, 2:3]).shape[1] == 4


def test_build_codec_each_kind():
    pixel = build_codec(CodecConfig(kind="pixel", spatial_factor=2, temporal_factor=1))
    assert isinstance(pixel, PixelCodec) and pixel.latent_channels == 12
    wan = build_codec(CodecConfig(kind="wan_vae", spatial_factor=8, temporal_factor=4, vae_dim=8, z_dim=4))
    assert isinstance(wan, WanVAECodec) and wan.latent_channels == 4 and wan.vae.dim == 8


def test_build_codec_unknown_kind():
    with pytest.raises(ValueError, match="valid: pixel, wan_vae"):
        build_codec(CodecConfig(kind="vqgan"))


def test_build_codec_wan_with_wrong_factors():
    with pytest.raises(ValueError, match="spatial_factor"):
        build_codec(CodecConfig(kind="wan_vae", spatial_factor=4, temporal_factor=4, vae_dim=8, z_dim=4))


def test_build_codec_loads_vae_path(tmp_path, wan_codec):
    path = tmp_path / "vae.pth"
    torch.save(wan_codec.vae.state_dict(), path)
    codec = build_codec(CodecConfig(kind="wan_vae", spatial_factor=8, temporal_factor=4, vae_dim=8, z_dim=4,
                                    vae_path=str(path)))
    latent = torch.randn(1, 2, 4, 2, 2)
    with torch.no_grad():
        assert torch.equal(codec.decode(latent), wan_codec.decode(latent))
