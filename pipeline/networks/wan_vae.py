"""Wan2.1 causal 3-D VAE: 8x spatial / 4x temporal compression, 16 latent channels.

Parameter names and shapes match Wan2.1's `WanVAE_` (`wan/modules/vae.py`), so the released
`Wan2.1_VAE.pth` loads strictly. Layout inside this module is channels-first video
`[B, C, T, H, W]`; `pipeline.networks.codecs` converts to the project's `[B, F, C, H, W]`.

Causality: every temporal convolution is zero-padded on the past side only, so frame t never sees
frame t+1. That lets the encoder run on the first frame alone and then on chunks of 4 frames, and
the decoder on one latent frame at a time, carrying each layer's last input frames between calls
in a per-layer cache (`Cache`). The first frame is special at both ends: the encoder's temporal
downsamplers pass it through without temporal mixing (frame 0 -> latent 0), and the decoder's
temporal upsamplers emit one frame for it instead of two, hence video frames = 1 + 4 (latents - 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoints import check_state_dict, read_state_dict

# Per-channel statistics of Wan2.1 latents (its `WanVAE` wrapper): latents are handed to the DiT as
# (mu - mean) / std so that every channel has roughly unit variance.
WAN_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

# Per-layer temporal state carried between chunks, keyed by the module that owns it: a causal
# conv's last input frames, a downsampler's last frame, or an upsampler's "first frame done" flag.
Cache = dict[nn.Module, Any]


class CausalConv3d(nn.Conv3d):
    """3-D conv padded by `2 * padding_t` frames on the past side only (none on the future side).

    With a `cache`, the past padding is replaced by the last input frames of the previous call, so
    running chunk by chunk gives the same output as running the whole sequence at once.
    x: [B, C_in, T, H, W] -> [B, C_out, T', H', W'].
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1, padding: int | tuple[int, int, int] = 0):
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        # Spatial padding stays symmetric and inside the conv; temporal padding is done by hand.
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=(0, ph, pw))
        self.time_pad = 2 * pt

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        if self.time_pad:
            past = cache.get(self) if cache is not None else None
            if past is None:
                b, c, _, h, w = x.shape
                past = x.new_zeros(b, c, self.time_pad, h, w)
            x = torch.cat([past, x], dim=2)
            if cache is not None:
                # clone: a slice would keep the whole concatenated chunk alive until the next call.
                cache[self] = x[:, :, -self.time_pad:].clone()
        return super().forward(x)


class RMSNorm(nn.Module):
    """Per-position L2 normalisation over channels, times sqrt(C) and a learned gain (no bias).

    `images=True` gives a gain of shape [C, 1, 1] for [N, C, H, W] inputs, else [C, 1, 1, 1] for
    [B, C, T, H, W]; the shapes are Wan's, which the checkpoint fixes.
    """

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * (2 if images else 3)))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class _Upsample2x(nn.Module):
    """Nearest 2x spatial upsampling of [N, C, H, W] (a module so `resample.1` keeps Wan's index)."""

    def forward(self, x: Tensor) -> Tensor:
        # bf16 nearest interpolation is not available on every backend, so go through fp32.
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").type_as(x)


def _per_frame(fn: nn.Module, x: Tensor) -> Tensor:
    """Apply a 2-D module to every frame: [B, C, T, H, W] -> [B, C', T, H', W']."""
    b, _, t = x.shape[:3]
    y = fn(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (b, t)).transpose(1, 2)


class Resample(nn.Module):
    """2x spatial (and optionally 2x causal temporal) down- or upsampling.

    Modes: `downsample2d`, `downsample3d` (C -> C), `upsample2d`, `upsample3d` (C -> C // 2).
    Temporal modes need a `cache`: the first call must carry only the clip's first frame, which
    passes through without temporal resampling (so T_out = 1 for it); later chunks map T -> T / 2
    (down, T even) or T -> 2 T (up).
    """

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(_Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        elif mode.startswith("downsample"):
            # Pad right/bottom only, so a stride-2 conv on even sizes gives exactly half.
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")
        if mode == "upsample3d":
            # Predicts two output frames per input frame, stacked along channels.
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: Tensor, cache: Cache) -> Tensor:
        if self.mode == "upsample3d":
            if self in cache:
                b, c, t, h, w = x.shape
                x = self.time_conv(x, cache)
                # [B, (2, C), T] -> [B, C, (T, 2)]: the two predictions become consecutive frames.
                x = x.view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
            else:
                # The first frame is not doubled, and its features never enter time_conv's context:
                # the second chunk starts from zero padding, exactly as in Wan.
                cache[self] = True
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            prev = cache.get(self)
            cache[self] = x[:, :, -1:].clone()
            if prev is not None:
                # Output j >= 1 mixes frames 2j-2, 2j-1, 2j of the whole sequence.
                x = self.time_conv(torch.cat([prev, x], dim=2))
        return x


class ResidualBlock(nn.Module):
    """norm-SiLU-conv-norm-SiLU-dropout-conv plus a (1x1x1 conv when C changes) shortcut.

    x: [B, C_in, T, H, W] -> [B, C_out, T, H, W].
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.residual = nn.ModuleList([
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Dropout(dropout), CausalConv3d(out_dim, out_dim, 3, padding=1),
        ])
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor, cache: Cache) -> Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention within each frame (no mixing across time).

    x: [B, C, T, H, W] -> same shape.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        # Start as the identity map (Wan zero-inits the output projection too).
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: Tensor, cache: Cache | None = None) -> Tensor:
        def attend(y: Tensor) -> Tensor:
            n, c, h, w = y.shape
            qkv = self.to_qkv(self.norm(y)).flatten(2).transpose(1, 2)  # [N, HW, 3C]
            q, k, v = qkv.unsqueeze(1).chunk(3, dim=-1)  # [N, 1, HW, C] each: one head
            out = F.scaled_dot_product_attention(q, k, v).squeeze(1)
            return self.proj(out.transpose(1, 2).reshape(n, c, h, w))

        return x + _per_frame(attend, x)


class Encoder3d(nn.Module):
    """Video [B, 3, T, H, W] -> moments [B, 2 z, T', H / 8, W / 8] (for Wan's default config)."""

    def __init__(self, dim: int, z_dim: int, dim_mult: tuple[int, ...], num_res_blocks: int,
                 temporal_downsample: tuple[bool, ...], dropout: float = 0.0):
        super().__init__()
        dims = [dim * u for u in (1, *dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "downsample3d" if temporal_downsample[i] else "downsample2d"))
        self.downsamples = nn.ModuleList(blocks)
        c = dims[-1]
        self.middle = nn.ModuleList([ResidualBlock(c, c, dropout), AttentionBlock(c), ResidualBlock(c, c, dropout)])
        self.head = nn.ModuleList([RMSNorm(c), nn.SiLU(), CausalConv3d(c, z_dim, 3, padding=1)])

    def forward(self, x: Tensor, cache: Cache) -> Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.downsamples, *self.middle, *self.head):
            x = layer(x) if isinstance(layer, RMSNorm | nn.SiLU) else layer(x, cache)
        return x


class Decoder3d(nn.Module):
    """Latent [B, z, T', h, w] -> video [B, 3, T, 8 h, 8 w] (for Wan's default config)."""

    def __init__(self, dim: int, z_dim: int, dim_mult: tuple[int, ...], num_res_blocks: int,
                 temporal_upsample: tuple[bool, ...], dropout: float = 0.0):
        super().__init__()
        dims = [dim * u for u in (dim_mult[-1], *dim_mult[::-1])]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        c = dims[0]
        self.middle = nn.ModuleList([ResidualBlock(c, c, dropout), AttentionBlock(c), ResidualBlock(c, c, dropout)])
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # the previous level's upsampler halved the channels
            for _ in range(num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
        self.upsamples = nn.ModuleList(blocks)
        self.head = nn.ModuleList([RMSNorm(dims[-1]), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1)])

    def forward(self, x: Tensor, cache: Cache) -> Tensor:
        x = self.conv1(x, cache)
        for layer in (*self.middle, *self.upsamples, *self.head):
            x = layer(x) if isinstance(layer, RMSNorm | nn.SiLU) else layer(x, cache)
        return x


class WanVAE(nn.Module):
    """Wan2.1 video VAE (`WanVAE_` parameters) with Wan's latent normalisation built in.

    `encode`: video [B, 3, 1 + 4 k, H, W] in [-1, 1] -> normalised latent mu [B, z, 1 + k, H/8, W/8].
    `decode`: normalised latent [B, z, n, h, w] -> video [B, 3, 1 + 4 (n - 1), 8 h, 8 w] (unclamped).
    (Factors for the default `dim_mult` / `temporal_downsample`; see `spatial_factor`,
    `temporal_factor`.) With z_dim == 16 the normalisation uses Wan's statistics, else mean 0 / std 1.
    """

    def __init__(self, dim: int = 96, z_dim: int = 16, dim_mult: tuple[int, ...] = (1, 2, 4, 4),
                 num_res_blocks: int = 2, temporal_downsample: tuple[bool, ...] = (False, True, True),
                 dropout: float = 0.0):
        super().__init__()
        dim_mult, temporal_downsample = tuple(dim_mult), tuple(temporal_downsample)
        if len(temporal_downsample) != len(dim_mult) - 1:
            raise ValueError(f"temporal_downsample needs {len(dim_mult) - 1} entries, got {temporal_downsample}")
        self.dim, self.z_dim = dim, z_dim
        self.spatial_factor = 2 ** (len(dim_mult) - 1)
        self.temporal_factor = 2 ** sum(temporal_downsample)
        self.encoder = Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, temporal_downsample, dropout)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks, temporal_downsample[::-1], dropout)
        # Plain tuples, not buffers: they must survive meta-device construction + assign-loading and
        # must not appear in the state dict (Wan's checkpoint has no such keys).
        if z_dim == len(WAN_LATENT_MEAN):
            self.latent_mean, self.latent_std = WAN_LATENT_MEAN, WAN_LATENT_STD
        else:
            self.latent_mean, self.latent_std = (0.0,) * z_dim, (1.0,) * z_dim

    def video_frames(self, latent_frames: int) -> int:
        """Video frames decoded from `latent_frames` latent frames (0 -> 0)."""
        if latent_frames < 0:
            raise ValueError(f"latent_frames must be >= 0, got {latent_frames}")
        return 0 if latent_frames == 0 else 1 + self.temporal_factor * (latent_frames - 1)

    def latent_frames(self, video_frames: int) -> int:
        """Latent frames encoded from `video_frames` frames, which must be 1 + temporal_factor * k."""
        t = self.temporal_factor
        if video_frames < 1 or (video_frames - 1) % t:
            raise ValueError(f"the Wan VAE encodes 1 + {t} k video frames (1, {1 + t}, {1 + 2 * t}, ...); "
                             f"got {video_frames}")
        return 1 + (video_frames - 1) // t

    def _stats(self, z: Tensor) -> tuple[Tensor, Tensor]:
        shape = (1, self.z_dim, 1, 1, 1)
        mean = torch.tensor(self.latent_mean, device=z.device, dtype=z.dtype).view(shape)
        inv_std = 1.0 / torch.tensor(self.latent_std, device=z.device, dtype=z.dtype).view(shape)
        return mean, inv_std

    def encode_moments(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """Un-normalised posterior (mu, log_var), each [B, z, T', h, w], of video [B, 3, T, H, W]."""
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W], got {tuple(video.shape)}")
        self.latent_frames(video.shape[2])  # validates T
        cache: Cache = {}
        # The first frame alone, then chunks of `temporal_factor` frames, as Wan does: chunk
        # boundaries must line up with the temporal downsamplers' stride-2 windows.
        t = self.temporal_factor
        # (split of an empty tail still yields one empty chunk: an image is the first frame alone)
        chunks = [video[:, :, :1]] + [c for c in video[:, :, 1:].split(t, dim=2) if c.shape[2]]
        out = torch.cat([self.encoder(c, cache) for c in chunks], dim=2)
        mu, log_var = self.conv1(out).chunk(2, dim=1)
        return mu, log_var

    def encode(self, video: Tensor) -> Tensor:
        """Normalised latent mean (mu - mean) / std: video [B, 3, T, H, W] -> [B, z, T', h, w]."""
        mu, _ = self.encode_moments(video)
        mean, inv_std = self._stats(mu)
        return (mu - mean) * inv_std

    def decode(self, z: Tensor) -> Tensor:
        """Whole-clip decode, one latent frame at a time: [B, z, n, h, w] -> [B, 3, 1 + 4 (n-1), H, W]."""
        return self.stream_decoder().decode(z)

    def stream_decoder(self, frames_per_call: int = 1) -> WanVAEStreamDecoder:
        """A block-by-block decoder for one clip (see `WanVAEStreamDecoder`)."""
        return WanVAEStreamDecoder(self, frames_per_call)


class WanVAEStreamDecoder:
    """Decodes a latent clip block by block, carrying the decoder's causal caches between blocks.

    `decode(z_block)`: normalised latent [B, z, f, h, w] (any f >= 0) -> video [B, 3, n, H, W] with
    n = 1 + 4 (f - 1) for the clip's first block and n = 4 f afterwards. Concatenating the outputs
    equals `WanVAE.decode` of the concatenated latents. `frames_per_call` latent frames go through the
    decoder at once (1 = Wan's memory profile; more = fewer, larger kernels with the same result);
    the clip's first latent frame always runs alone because the upsamplers treat it specially.
    Keep B, h, w fixed until `reset()`.
    """

    def __init__(self, vae: WanVAE, frames_per_call: int = 1):
        if frames_per_call < 1:
            raise ValueError(f"frames_per_call must be >= 1, got {frames_per_call}")
        self.vae = vae
        self.frames_per_call = frames_per_call
        self.reset()

    def reset(self) -> None:
        """Forget the clip so far: the next block starts a new clip."""
        self._cache: Cache = {}
        self.latent_frames_seen = 0

    def decode(self, z: Tensor) -> Tensor:
        vae = self.vae
        if z.dim() != 5 or z.shape[1] != vae.z_dim:
            raise ValueError(f"expected latent [B, {vae.z_dim}, f, h, w], got {tuple(z.shape)}")
        b, _, f, h, w = z.shape
        if f == 0:
            s = vae.spatial_factor
            return z.new_zeros(b, 3, 0, h * s, w * s)
        mean, inv_std = vae._stats(z)
        x = vae.conv2(z / inv_std + mean)
        chunks = [x[:, :, :1]] if self.latent_frames_seen == 0 else []
        rest = x[:, :, len(chunks):]
        chunks += list(rest.split(self.frames_per_call, dim=2)) if rest.shape[2] else []
        out = torch.cat([vae.decoder(c, self._cache) for c in chunks], dim=2)
        self.latent_frames_seen += f
        return out


def load_wan_vae(path: str | Path, dim: int = 96, z_dim: int = 16, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> WanVAE:
    """Build `WanVAE(dim, z_dim)` from a checkpoint (strict keys and shapes), in eval mode, frozen."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VAE checkpoint not found: {path}")
    sd = read_state_dict(path)
    # Meta construction skips random init of ~127M parameters that would be overwritten anyway.
    with torch.device("meta"):
        model = WanVAE(dim=dim, z_dim=z_dim)
    check_state_dict(model, sd, source=f"VAE checkpoint {path} (loading as dim={dim}, z_dim={z_dim})")
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


__all__ = [
    "WAN_LATENT_MEAN", "WAN_LATENT_STD", "CausalConv3d", "WanVAE", "WanVAEStreamDecoder",
    "load_wan_vae",
]
