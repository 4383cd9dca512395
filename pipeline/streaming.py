"""The KV-cached model backend the samplers drive: predict x0 for query blocks, commit clean blocks.

A backend answers two calls (the samplers in `samplers.py` own the loop and the noise):
    predict(blocks, x, t) -> x0     x, x0: [B, nb*fpb, C, H, W]; t: [B, nb*fpb] per-frame timesteps
    commit(block, x0)               a finished block's clean latent [B, fpb, C, H, W]
`reference.RecomputeBackend` answers the same calls without a cache (the equivalence reference).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kv_cache import CacheEntry, RollingKVCache
from .networks.wan_dit import TextCond, WanDiT
from .schedule import flow_to_x0


class CachedBackend:
    def __init__(self, model: WanDiT, text: TextCond, cache: RollingKVCache, num_train_timesteps: int = 1000):
        self.model = model
        self.text = text
        self.cache = cache
        self.num_train_timesteps = num_train_timesteps

    def predict(self, blocks: tuple[int, ...], x: Tensor, t: Tensor) -> Tensor:
        """Joint forward of the query blocks (bidirectional among them) over the cached context."""
        flow = self.model(x, t, self.text, kv_context=self.cache.context())
        return flow_to_x0(flow, x, t, self.num_train_timesteps)

    def commit(self, block: int, x0: Tensor) -> None:
        """Clean pass: one forward of the finished block at t = 0 writes its K/V into the cache."""
        t = torch.zeros(x0.shape[:2], device=x0.device)
        _, (k, v) = self.model(x0, t, self.text, kv_context=self.cache.context(), return_kv=True)
        self.cache.commit(CacheEntry(block=block, k=k, v=v, latent=x0))

    def switch_text(self, text: TextCond) -> None:
        """New prompt: cross-attention uses `text` from now on, and the recent blocks' K/V are
        recomputed under it in one forward (sink kept): recent block i attends to the sink, the
        recent blocks before it and itself (block-causal), at the same RoPE positions as before.
        """
        self.text = text
        recent = list(self.cache.recent)
        if not recent:
            return
        sink_ctx = None
        if self.cache.sink:
            sink_ctx = (torch.cat([e.k for e in self.cache.sink], 2), torch.cat([e.v for e in self.cache.sink], 2))
        x = torch.cat([e.latent for e in recent], dim=1)
        t = torch.zeros(x.shape[:2], device=x.device)
        per_block = recent[0].k.shape[2]
        n_sink = 0 if sink_ctx is None else sink_ctx[0].shape[2]
        mask = block_causal_mask(len(recent), per_block, n_sink, x.device)
        _, (k, v) = self.model(x, t, text, kv_context=sink_ctx, attn_mask=mask, return_kv=True)
        for i, e in enumerate(recent):
            sl = slice(i * per_block, (i + 1) * per_block)
            self.cache.commit(CacheEntry(block=e.block, k=k[:, :, sl], v=v[:, :, sl], latent=e.latent))


def block_causal_mask(num_blocks: int, tokens_per_block: int, prefix_tokens: int, device=None) -> Tensor:
    """bool [nb*T, prefix + nb*T]: every query sees the whole prefix and blocks up to its own."""
    blk = torch.arange(num_blocks, device=device).repeat_interleave(tokens_per_block)
    causal = blk[:, None] >= blk[None, :]
    prefix = torch.ones(len(blk), prefix_tokens, dtype=torch.bool, device=device)
    return torch.cat([prefix, causal], dim=1)
