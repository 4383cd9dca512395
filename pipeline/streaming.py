"""The KV-cached model backend the samplers drive: predict x0 for query blocks, commit clean blocks.

A backend answers two calls (the samplers in `samplers.py` own the loop and the noise):
    predict(blocks, x, t) -> x0     x, x0: [B, nb*fpb, C, H, W]; t: [B, nb*fpb] per-frame timesteps
    commit(block, x0)               a finished block's clean latent [B, fpb, C, H, W]
Every forward attends to the committed blocks the context rule gives it (`windows.context_for`,
through a `ContextRule`): the window pass to `rule.window(first, nb)`, the clean pass to
`rule.clean(block)`. `reference.RecomputeBackend` answers the same calls without a cache.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kv_cache import CacheEntry, RollingKVCache
from .networks.wan_dit import TextCond, WanDiT
from .schedule import flow_to_x0
from .windows import ContextRule


class CachedBackend:
    def __init__(self, model: WanDiT, text: TextCond, cache: RollingKVCache, rule: ContextRule,
                 num_train_timesteps: int = 1000):
        if cache.sink_blocks != rule.sink_blocks or cache.recent_blocks < rule.cache_recent:
            raise ValueError(f"a cache of sink {cache.sink_blocks} + {cache.recent_blocks} recent blocks cannot serve "
                             f"the context rule (sink {rule.sink_blocks}, needs {rule.cache_recent} recent)")
        self.model = model
        self.text = text
        self.cache = cache
        self.rule = rule
        self.num_train_timesteps = num_train_timesteps

    @staticmethod
    def build(model: WanDiT, text: TextCond, rule: ContextRule, num_train_timesteps: int = 1000) -> CachedBackend:
        """A backend over a fresh cache sized for `rule`."""
        return CachedBackend(model, text, RollingKVCache.for_rule(rule), rule, num_train_timesteps)

    def predict(self, blocks: tuple[int, ...], x: Tensor, t: Tensor) -> Tensor:
        """Joint forward of the query blocks (bidirectional among them) over their context."""
        ctx = self.cache.context(self.rule.window(blocks[0], len(blocks)))
        flow = self.model(x, t, self.text, kv_context=ctx)
        return flow_to_x0(flow, x, t, self.num_train_timesteps)

    def commit(self, block: int, x0: Tensor, partial: bool = False) -> None:
        """Clean pass: one forward of the finished block at t = 0 over `rule.clean(block)` writes its
        K/V into the cache. `partial`: the stream's earlier blocks are only partly known (priming
        from a history that keeps the sink and recent blocks): see what of the rule's view is held."""
        visible = self.rule.clean(block)
        if partial:
            visible = self.cache.held(visible)
        t = torch.zeros(x0.shape[:2], device=x0.device)
        _, (k, v) = self.model(x0, t, self.text, kv_context=self.cache.context(visible), return_kv=True)
        self.cache.commit(CacheEntry(block=block, k=k, v=v, latent=x0))

    def switch_text(self, text: TextCond) -> None:
        """New prompt: cross-attention uses `text` from now on, and the recent blocks' K/V are
        recomputed under it in one forward (sink kept). Recent block j attends to what its clean
        pass would see of the cache, `rule.clean(j)` ∩ held (sink + the recent blocks before it:
        block-causal), plus itself, at the same relative RoPE positions as its clean pass.
        """
        self.text = text
        recent = list(self.cache.recent)
        if not recent:
            return
        sink = list(self.cache.sink)
        ctx = self.cache.context(tuple(e.block for e in sink)) if sink else None
        x = torch.cat([e.latent for e in recent], dim=1)
        t = torch.zeros(x.shape[:2], device=x.device)
        per_block = recent[0].k.shape[2]
        layout = [e.block for e in sink] + [e.block for e in recent]
        rows = [set(self.rule.clean(e.block)) | {e.block} for e in recent]
        mask = block_mask(rows, layout, len(sink), per_block, x.device)
        _, (k, v) = self.model(x, t, text, kv_context=ctx, attn_mask=mask, return_kv=True)
        for i, e in enumerate(recent):
            sl = slice(i * per_block, (i + 1) * per_block)
            self.cache.commit(CacheEntry(block=e.block, k=k[:, :, sl], v=v[:, :, sl], latent=e.latent))


def block_mask(rows: list[set[int]], layout: list[int], first_query: int, tokens_per_block: int,
               device=None) -> Tensor:
    """bool [q*T, len(layout)*T]: query block i (= layout[first_query + i]) attends to the key
    blocks of `layout` in rows[i]; T tokens per block."""
    allowed = torch.tensor([[b in row for b in layout] for row in rows], dtype=torch.bool, device=device)
    if allowed.shape[0] != len(layout) - first_query:
        raise ValueError(f"{allowed.shape[0]} rows for {len(layout) - first_query} query blocks")
    return allowed.repeat_interleave(tokens_per_block, 0).repeat_interleave(tokens_per_block, 1)


def block_causal_mask(num_blocks: int, tokens_per_block: int, prefix_tokens: int, device=None) -> Tensor:
    """bool [nb*T, prefix + nb*T]: every query sees the whole prefix and blocks up to its own."""
    blk = torch.arange(num_blocks, device=device).repeat_interleave(tokens_per_block)
    causal = blk[:, None] >= blk[None, :]
    prefix = torch.ones(len(blk), prefix_tokens, dtype=torch.bool, device=device)
    return torch.cat([prefix, causal], dim=1)
