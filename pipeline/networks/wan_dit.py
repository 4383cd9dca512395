"""Wan2.1 text-to-video DiT with Wan's exact parameter layout, bidirectional or causal with a KV context.

Parameter names/shapes equal Wan2.1-T2V's `WanModel` (patch_embedding, text_embedding.{0,2},
time_embedding.{0,2}, time_projection.1, blocks.N.{modulation, self_attn.{q,k,v,o,norm_q,norm_k},
norm3, cross_attn.{q,k,v,o,norm_q,norm_k}, ffn.{0,2}}, head.{head,modulation}), so real checkpoints
load with a strict state_dict. The same module serves three roles:

* teacher / critic: bidirectional over a whole clip, one timestep per sample (t: [B]);
* student: a timestep per latent frame (t: [B, F]) — Wan's modulation is applied per frame;
* streaming: `kv_context` holds pre-RoPE keys/values of earlier clean frames; the query frames
  attend bidirectionally among themselves and to that context. RoPE is applied at attention time
  with frame positions [0 .. ctx_frames + F) — context first, queries after — so positions are
  relative to the current context and never grow with stream length.

Shapes: latents x [B, F, C, H, W]; tokens [B, L, dim] with L = f*h*w (f = F/p_t, h = H/p_h,
w = W/p_w), frame-major. Flow output [B, F, C_out, H, W] (v = eps - x0).

With `model.prediction = "x0"` the head's output is read as x0_hat and forward returns the flow
v = (x_t - x0_hat) / max(sigma, X0_MIN_SIGMA), sigma = t / NUM_TRAIN_TIMESTEPS per frame, so every
caller (samplers, losses, DMD) still sees a flow; a v-space loss then weighs x0 errors by 1/sigma^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..attention import attention
from ..config import ModelConfig
from ..rope import apply_rope, rope_cos_sin
from ..schedule import x0_to_flow

NUM_TRAIN_TIMESTEPS = 1000  # t in [0, T]: Wan's timestep scale, which the time embedding is trained on
# x0-prediction divides by sigma; below this the flow would blow up (and the clean KV-cache pass runs
# at t = 0). The same floor as "Back to Basics: Let Denoising Generative Models Denoise" (x-pred, v-loss).
X0_MIN_SIGMA = 0.05


def sinusoidal_embedding(dim: int, t: Tensor) -> Tensor:
    """[N] timesteps -> [N, dim] = [cos(t * w_i), sin(t * w_i)], w_i = 10000^(-i / (dim/2)), float64."""
    half = dim // 2
    t = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = torch.outer(t, freqs)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, statistics in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 (Wan's WanLayerNorm)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


class Attention(nn.Module):
    """q/k/v/o projections with RMS-normalised q and k (Wan's self_attn and cross_attn layout)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def heads(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.num_heads, -1))

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """[B, L, dim] -> q, k, v [B, L, n, d]; k is pre-RoPE (what the KV cache stores)."""
        return self.heads(self.norm_q(self.q(x))), self.heads(self.norm_k(self.k(x))), self.heads(self.v(x))

    def project_kv(self, ctx: Tensor) -> tuple[Tensor, Tensor]:
        return self.heads(self.norm_k(self.k(ctx))), self.heads(self.v(ctx))


def modulate(x: Tensor, shift: Tensor, scale: Tensor, frames: int) -> Tensor:
    """x [B, L, dim] * (1 + scale) + shift with per-frame shift/scale [B, f, dim] (L = f * tokens/frame)."""
    xv = x.unflatten(1, (frames, -1))
    return (xv * (1 + scale[:, :, None]) + shift[:, :, None]).flatten(1, 2)


def gate(y: Tensor, g: Tensor, frames: int) -> Tensor:
    return (y.unflatten(1, (frames, -1)) * g[:, :, None]).flatten(1, 2)


class DiTBlock(nn.Module):
    """Self-attention (RoPE) -> cross-attention to text -> FFN, adaLN-modulated per frame.

    modulation [1, 6, dim] + e0 [B, f, 6, dim] gives (shift, scale, gate) for attention and FFN.
    The block is split into `attn_inputs` / `finish` so the streaming path, the recompute
    reference and training share every op but the attention itself.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = LayerNorm32(dim, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = Attention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = LayerNorm32(dim, eps=cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = Attention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = LayerNorm32(dim, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: Tensor, e0: Tensor, frames: int, ctx: tuple[list[Tensor], list[Tensor]] | None,
                text_kv: tuple[Tensor, Tensor], mask: Tensor | None, cos: Tensor, sin: Tensor,
                q_cos: Tensor, q_sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One block over query tokens x [B, L, dim] attending to [ctx chunks | x]; returns (x, k, v)
        with x's pre-RoPE k, v [B, L, n, d]. ctx: this layer's context K and V chunks [B, T_j, n, d],
        concatenated here once with x's own. (Going through forward lets ZeRO-3 gather `modulation`.)"""
        mods = self.mods(e0)
        q, k, v = self.attn_inputs(x, mods, frames)
        keys, values = (k, v) if ctx is None else (torch.cat([*ctx[0], k], 1), torch.cat([*ctx[1], v], 1))
        out = attention(apply_rope(q, q_cos, q_sin), apply_rope(keys, cos, sin), values, mask)
        return self.finish(x, out, mods, text_kv, frames), k, v

    def mods(self, e0: Tensor) -> tuple[Tensor, ...]:
        """e0 [B, f, 6, dim] -> six [B, f, dim] float32 tensors."""
        return (self.modulation.float()[:, None] + e0.float()).unbind(2)

    def attn_inputs(self, x: Tensor, mods: tuple[Tensor, ...], frames: int) -> tuple[Tensor, Tensor, Tensor]:
        shift, scale = mods[0], mods[1]
        h = modulate(self.norm1(x).float(), shift, scale, frames).to(self.self_attn.q.weight.dtype)
        return self.self_attn.project_qkv(h)

    def finish(self, x: Tensor, attn_out: Tensor, mods: tuple[Tensor, ...], text_kv: tuple[Tensor, Tensor],
               frames: int) -> Tensor:
        """x [B, L, dim] (float32 residual), attn_out [B, L, n, d] -> x after o-proj, cross-attn and FFN."""
        y = self.self_attn.o(attn_out.flatten(2))
        x = x + gate(y.float(), mods[2], frames)
        wdt = self.cross_attn.q.weight.dtype
        q = self.cross_attn.heads(self.cross_attn.norm_q(self.cross_attn.q(self.norm3(x).to(wdt))))
        x = x + self.cross_attn.o(attention(q, *text_kv).flatten(2)).float()
        y = self.ffn(modulate(self.norm2(x).float(), mods[3], mods[4], frames).to(wdt))
        return x + gate(y.float(), mods[5], frames)


class Head(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = LayerNorm32(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: Tensor, e: Tensor, frames: int) -> Tensor:
        """x [B, L, dim], e [B, f, dim] -> [B, L, prod(patch) * out_dim]."""
        shift, scale = (self.modulation.float()[:, None] + e.float()[:, :, None]).unbind(2)
        return self.head(modulate(self.norm(x).float(), shift, scale, frames).to(self.head.weight.dtype))


@dataclass
class TextCond:
    """Per-layer cross-attention keys/values of one batch of prompts: k[i], v[i]: [B, text_len, n, d]."""

    k: list[Tensor]
    v: list[Tensor]

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        return self.k[i], self.v[i]


class KVContext:
    """Pre-RoPE keys/values of the context blocks a forward attends to, one chunk per block.

    ks[j], vs[j]: [layers, B, T_j, n, d] (T_j a multiple of tokens per latent frame), in RoPE layout
    order (sink first, then recent blocks oldest first). Chunks are concatenated per layer inside
    the block, together with the query's own K/V, so no model-wide copy of the context is made.
    """

    def __init__(self, ks: list[Tensor], vs: list[Tensor]):
        if len(ks) != len(vs) or not ks:
            raise ValueError(f"KVContext needs as many K as V chunks, at least one (got {len(ks)}, {len(vs)})")
        self.ks, self.vs = ks, vs

    @staticmethod
    def of(kv) -> KVContext | None:
        """A KVContext, a (k, v) pair of [layers, B, T, n, d] tensors, or None."""
        if kv is None or isinstance(kv, KVContext):
            return kv
        return KVContext([kv[0]], [kv[1]])

    @property
    def tokens(self) -> int:
        return sum(k.shape[2] for k in self.ks)

    def layer(self, i: int) -> tuple[list[Tensor], list[Tensor]]:
        return [k[i] for k in self.ks], [v[i] for v in self.vs]


@dataclass
class Tokens:
    """Embedded input: x [B, L, dim] float32, per-frame e [B, f, dim] and e0 [B, f, 6, dim], grid (f, h, w)."""

    x: Tensor
    e: Tensor
    e0: Tensor
    grid: tuple[int, int, int]


class WanDiT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.gradient_checkpointing = False
        self._rope_cache: dict[tuple, tuple[Tensor, Tensor]] = {}
        self.init_weights()

    # ----------------------------------------------------------------------------------- init
    def init_weights(self, zero_head: bool = True) -> None:
        """Wan's init: xavier linears, N(0, .02) text/time embeddings, zero output head.

        `zero_head=False` keeps a random head so an untrained model's output depends on its
        inputs (random-weight demos and equivalence tests would otherwise see a constant 0 flow).
        """
        if any(p.is_meta for p in self.parameters()):
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        if zero_head:
            nn.init.zeros_(self.head.head.weight)

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    # ----------------------------------------------------------------------------------- text
    def encode_text(self, text: Tensor) -> TextCond:
        """text [B, Lt, text_dim] encoder states (Lt <= text_len) -> per-layer cross-attn K/V.

        Zero-padded to text_len as Wan does (the padding embeds to a learned constant and is
        attended to). Computed once per prompt and reused by every forward of a stream.
        """
        pad = self.cfg.text_len - text.shape[1]
        if pad < 0:
            raise ValueError(f"text has {text.shape[1]} tokens > model.text_len {self.cfg.text_len}")
        ctx = self.text_embedding(F.pad(text, (0, 0, 0, pad)).to(self.dtype))
        kv = [blk.cross_attn.project_kv(ctx) for blk in self.blocks]
        return TextCond(k=[k for k, _ in kv], v=[v for _, v in kv])

    # ----------------------------------------------------------------------------------- pieces
    def embed(self, x: Tensor, t: Tensor) -> Tokens:
        """x [B, F, C, H, W], t [B] or [B, F] -> Tokens (per-frame time modulation)."""
        b, nf = x.shape[:2]
        pt = self.cfg.patch_size[0]
        h = self.patch_embedding(x.transpose(1, 2).to(self.dtype))  # [B, dim, f, h, w]
        grid = tuple(h.shape[2:])
        tokens = h.flatten(2).transpose(1, 2).float()
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(b)
        if t.dim() == 1:
            t = t[:, None].expand(b, nf)
        t = t[:, ::pt]  # one timestep per token frame
        e = self.time_embedding(sinusoidal_embedding(self.cfg.freq_dim, t.flatten()).to(self.dtype))
        e0 = self.time_projection(e).unflatten(-1, (6, self.cfg.dim))
        return Tokens(x=tokens, e=e.float().unflatten(0, t.shape), e0=e0.float().unflatten(0, t.shape), grid=grid)

    def unpatchify(self, out: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """[B, L, pt*ph*pw*C] -> [B, F, C, H, W] (Wan's 'fhwpqrc' order of the head's channels)."""
        f, h, w = grid
        pt, ph, pw = self.cfg.patch_size
        u = out.float().reshape(out.shape[0], f, h, w, pt, ph, pw, self.cfg.out_dim)
        u = u.permute(0, 1, 4, 7, 2, 5, 3, 6)  # B, f, pt, C, h, ph, w, pw
        return u.reshape(out.shape[0], f * pt, self.cfg.out_dim, h * ph, w * pw)

    def rope(self, frames: int, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """cos/sin for frame positions 0..frames-1 on an h x w grid (memoised: layouts repeat every pass)."""
        key = (frames, h, w, str(device))
        if key not in self._rope_cache:
            if len(self._rope_cache) > 64:
                self._rope_cache.clear()
            pos = torch.arange(frames, device=device)
            self._rope_cache[key] = rope_cos_sin(pos, h, w, self.cfg.head_dim, self.cfg.rope_theta)
        return self._rope_cache[key]

    # ----------------------------------------------------------------------------------- forward
    def forward(
        self,
        x: Tensor,
        t: Tensor,
        text: TextCond,
        kv_context: KVContext | tuple[Tensor, Tensor] | None = None,
        attn_mask: Tensor | None = None,
        return_kv: bool = False,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Predict the flow v for x [B, F, C, H, W] at per-frame (or per-sample) timesteps t.

        kv_context: a KVContext (pre-RoPE chunks, one per context block) or one pre-RoPE (k, v) pair,
                    each [layers, B, T_ctx, n, d], T_ctx a multiple of h*w; the context frames take
                    RoPE positions 0..T_ctx/(h*w)-1 and x's frames follow them.
        attn_mask:  bool [L, T_ctx + L] (True = attend); None = full attention.
        return_kv:  also return x's own pre-RoPE (k, v) stacked [layers, B, L, n, d] for the cache.
        """
        tok = self.embed(x, t)
        f, h, w = tok.grid
        kv_context = KVContext.of(kv_context)
        ctx_frames = 0 if kv_context is None else kv_context.tokens // (h * w)
        cos, sin = self.rope(ctx_frames + f, h, w, x.device)
        q_cos, q_sin = cos[ctx_frames * h * w:], sin[ctx_frames * h * w:]
        ks, vs = [], []
        hidden = tok.x
        for i, blk in enumerate(self.blocks):
            ctx_i = None if kv_context is None else kv_context.layer(i)
            args = (hidden, tok.e0, f, ctx_i, text.layer(i), attn_mask, cos, sin, q_cos, q_sin)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                hidden, k, v = checkpoint(blk, *args, use_reentrant=False)
            else:
                hidden, k, v = blk(*args)
            if return_kv:
                ks.append(k)
                vs.append(v)
        flow = self.unpatchify(self.head(hidden, tok.e, f), tok.grid)
        if self.cfg.prediction == "x0":
            t_floor = torch.as_tensor(t, device=x.device, dtype=torch.float32)
            t_floor = t_floor.clamp_min(X0_MIN_SIGMA * NUM_TRAIN_TIMESTEPS)
            flow = x0_to_flow(flow, x.float(), t_floor, NUM_TRAIN_TIMESTEPS)
        if return_kv:
            return flow, (torch.stack(ks), torch.stack(vs))
        return flow


def build_dit(cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
              seed: int | None = None, zero_head: bool = True) -> WanDiT:
    """Construct a WanDiT (seeded init when `seed` is given; device "meta" allocates nothing)."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        model = WanDiT(cfg)  # Wan's init, zero head
    if not zero_head and str(device) != "meta":
        model.init_weights(zero_head=False)
    return model.to(dtype=dtype)
