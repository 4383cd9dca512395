"""Wan2.1 VAE: checkpoint layout, causal chunking/streaming, and strict loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import layout_path
import torch
from safetensors.torch import save_file

from pipeline.networks.wan_vae import WAN_LATENT_MEAN, WAN_LATENT_STD, WanVAE, load_wan_vae

ATOL = 1e-5


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (incl. norm gains and the zero-initialised attention projections),
    scaled so activations stay O(1) through the network."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def vae() -> WanVAE:
    torch.manual_seed(0)
    return _randomize(WanVAE(dim=8, z_dim=4))


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= atol * max(1.0, b.abs().max().item()), f"max abs err {err}"


def test_full_size_layout_matches_wan_checkpoint():
    ref = json.loads(layout_path().read_text())["vae"]
    with torch.device("meta"):
        model = WanVAE(dim=96, z_dim=16)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = {k: list(v) for k, v in ref["keys"].items()}
    assert sorted(set(expected) - set(got)) == [], "missing keys"
    assert sorted(set(got) - set(expected)) == [], "unexpected keys"
    bad = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert bad == {}
    assert sum(p.numel() for p in model.parameters()) == ref["n_params"]


def test_latent_stats_only_for_16_channels():
    assert WanVAE(dim=8, z_dim=4).latent_mean == (0.0,) * 4
    with torch.device("meta"):
        assert WanVAE(dim=8, z_dim=16).latent_mean == WAN_LATENT_MEAN


@torch.no_grad()
def test_encode_decode_shapes_and_frame_counts(vae):
    video = torch.rand(2, 3, 9, 16, 32) * 2 - 1
    z = vae.encode(video)
    assert z.shape == (2, 4, 3, 2, 4)
    assert vae.latent_frames(9) == 3 and vae.video_frames(3) == 9 and vae.video_frames(1) == 1
    out = vae.decode(z)
    assert out.shape == (2, 3, 9, 16, 32)
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="1 \\+ 4 k"):
        vae.encode(video[:, :, :8])
    mu, log_var = vae.encode_moments(video)
    assert mu.shape == log_var.shape == z.shape


@torch.no_grad()
def test_encoder_is_causal(vae):
    """Latent i depends only on video frames up to 1 + 4 i: encoding a prefix gives the same latents."""
    video = torch.rand(1, 3, 13, 16, 16) * 2 - 1
    full = vae.encode(video)
    _close(vae.encode(video[:, :, :5]), full[:, :, :2])
    changed = video.clone()
    changed[:, :, 9:] = 0
    assert not torch.allclose(vae.encode(changed)[:, :, 3], full[:, :, 3])


@torch.no_grad()
def test_encoder_chunking_matches_one_pass_over_the_rest(vae):
    """Wan encodes frame 0 then chunks of 4; with the causal caches that must equal frame 0 then all
    remaining frames in one pass (this exercises the stride-2 temporal downsamplers' carried frame)."""
    video = torch.rand(1, 3, 13, 16, 16) * 2 - 1
    cache: dict = {}
    out = torch.cat([vae.encoder(video[:, :, :1], cache), vae.encoder(video[:, :, 1:], cache)], dim=2)
    mu_one_pass = vae.conv1(out).chunk(2, dim=1)[0]
    _close(vae.encode_moments(video)[0], mu_one_pass)


@torch.no_grad()
def test_latent_normalisation_uses_wan_statistics():
    vae16 = _randomize(WanVAE(dim=8, z_dim=16), seed=3)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    mean = torch.tensor(WAN_LATENT_MEAN).view(1, 16, 1, 1, 1)
    std = torch.tensor(WAN_LATENT_STD).view(1, 16, 1, 1, 1)
    mu, _ = vae16.encode_moments(video)
    z = vae16.encode(video)
    _close(z, (mu - mean) / std)
    raw = WanVAE(dim=8, z_dim=16)
    raw.load_state_dict(vae16.state_dict())
    raw.latent_mean, raw.latent_std = (0.0,) * 16, (1.0,) * 16
    _close(vae16.decode(z), raw.decode(z * std + mean))


# Computed with Wan2.1's reference `wan/modules/vae.py` (WanVAE_ + the WanVAE wrapper's scale) on the
# same weights (`_randomize(WanVAE(dim=8, z_dim=16), seed=1)`) and video; anchors us to Wan's numerics.
GOLDEN_LATENT = [0.05621, 0.43097, 0.21328, -0.08073, 0.15147, -0.47649, 0.34661, -0.84411, -0.19012, 0.03769,
                 -0.26135, 0.31545, 0.11332, 0.9945, 0.00357, 0.41128]
GOLDEN_VIDEO = [-0.09954, 1.15095, 0.82523, -0.49963, 0.77696, 0.51797, -0.45185, -0.07123, 1.00953, -0.13068,
                1.32362, 1.23629, 0.19724, -0.06551]


@torch.no_grad()
def test_matches_wan_reference_numerics():
    model = _randomize(WanVAE(dim=8, z_dim=16), seed=1)
    video = torch.rand(1, 3, 9, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    z = model.encode(video)
    out = model.decode(z)
    _close(z[0, :, :, 1, 0].flatten()[::3], torch.tensor(GOLDEN_LATENT), atol=1e-4)
    _close(out[0, :, :, 5, 9].flatten()[::2], torch.tensor(GOLDEN_VIDEO), atol=1e-4)


@torch.no_grad()
def test_decoder_is_causal(vae):
    z = torch.randn(1, 4, 4, 2, 2)
    full = vae.decode(z)
    _close(vae.decode(z[:, :, :2]), full[:, :, :5])


@torch.no_grad()
@pytest.mark.parametrize("blocks,frames_per_call", [((1, 1, 1, 1, 1, 1), 1), ((1, 2, 3), 1), ((3, 3), 2),
                                                    ((2, 0, 4), 4), ((6,), 6)])
def test_stream_decode_equals_whole_clip(vae, blocks, frames_per_call):
    z = torch.randn(2, 4, sum(blocks), 2, 2)
    whole = vae.decode(z)
    stream = vae.stream_decoder(frames_per_call=frames_per_call)
    outs, start = [], 0
    for i, f in enumerate(blocks):
        out = stream.decode(z[:, :, start:start + f])
        expected_frames = 0 if f == 0 else (4 * f - 3 if i == 0 else 4 * f)
        assert out.shape == (2, 3, expected_frames, 16, 16)
        outs.append(out)
        start += f
    _close(torch.cat(outs, dim=2), whole)
    # reset starts a new clip: the same first block decodes as it did the first time
    stream.reset()
    _close(stream.decode(z[:, :, :blocks[0]]), outs[0])


def _save_pth(vae: WanVAE, path: Path) -> None:
    torch.save(vae.state_dict(), path)


def _save_safetensors(vae: WanVAE, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))


@torch.no_grad()
@pytest.mark.parametrize("suffix,save", [(".safetensors", _save_safetensors), (".pth", _save_pth)])
def test_checkpoint_round_trip(vae, tmp_path, suffix, save):
    path = tmp_path / f"vae{suffix}"
    save(vae, path)
    loaded = load_wan_vae(path, dim=8, z_dim=4)
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    z = vae.encode(video)
    assert torch.equal(loaded.encode(video), z)
    assert torch.equal(loaded.decode(z), vae.decode(z))


def test_pth_is_loaded_weights_only(tmp_path):
    """A pickle that would run code must be refused, not executed."""

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        load_wan_vae(path, dim=8, z_dim=4)


def test_checkpoint_key_mismatch_names_keys(vae, tmp_path):
    sd = dict(vae.state_dict())
    sd["decoder.head.2.wieght"] = sd.pop("decoder.head.2.weight")
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(ValueError) as err:
        load_wan_vae(path, dim=8, z_dim=4)
    assert "missing" in str(err.value) and "decoder.head.2.weight" in str(err.value)
    assert "unexpected" in str(err.value) and "decoder.head.2.wieght" in str(err.value)


def test_checkpoint_shape_mismatch_names_key(vae, tmp_path):
    path = tmp_path / "vae_dim8.pth"
    _save_pth(vae, path)
    with pytest.raises(ValueError, match=r"dim=12.*decoder\.conv1\.weight: \(32, 4, 3, 3, 3\) vs \(48, 4"):
        load_wan_vae(path, dim=12, z_dim=4)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_wan_vae(tmp_path / "nope.safetensors")


def test_an_image_encodes_alone_to_the_first_latent_of_any_clip(vae):
    """One frame -> one latent (the first-frame handling of DMD samples encodes a single frame);
    causal in time, it equals the first latent of a clip opening on that frame."""
    clip = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        image = vae.encode(clip[:, :, :1])
        whole = vae.encode(clip)
    assert image.shape == (1, 4, 1, 2, 2) and whole.shape[2] == 3
    _close(image[:, :, 0], whole[:, :, 0])
