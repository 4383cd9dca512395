"""Cache-free reference for the streaming samplers: every pass recomputes from scratch.

`RecomputeBackend` keeps only clean latents. Each `predict` re-runs the network over the *whole*
history (every committed block at t = 0) plus the query blocks, with an explicit block-level
attention mask reproducing what each token saw when the cached sampler computed it, by the same
context rule (`windows.context_for`):

    committed block j attends to  rule.clean(j) ∪ {j}                        (its clean pass)
    the query blocks attend to     rule.window(first query, #queries) ∪ queries

and RoPE positions laid out per query group exactly as the cached path does
([visible context | own tokens], counted from 0). It shares every layer with `WanDiT` except the
attention call, so agreement with `CachedBackend` checks the cache: pre-RoPE storage, relative
positions, eviction, each forward's view and reuse. Cost grows with the square of stream length
(the `--recompute` benchmark baseline).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .attention import attention
from .networks.wan_dit import TextCond, WanDiT
from .rope import apply_rope
from .schedule import flow_to_x0
from .windows import ContextRule


def visibility_mask(num_committed: int, query_blocks: tuple[int, ...], rule: ContextRule) -> Tensor:
    """bool [G, G] over block groups [0 .. num_committed-1, queries]: row = who the group attends to.

    Groups are the committed blocks (one each) and the query blocks (one group, last).
    """
    g = num_committed + 1
    mask = torch.zeros(g, g, dtype=torch.bool)
    for j in range(num_committed):
        mask[j, list(rule.clean(j))] = True
        mask[j, j] = True
    mask[-1, list(rule.window(query_blocks[0], len(query_blocks)))] = True
    mask[-1, -1] = True
    return mask


class RecomputeBackend:
    def __init__(self, model: WanDiT, text: TextCond, rule: ContextRule, num_train_timesteps: int = 1000):
        self.model = model
        self.text = text
        self.rule = rule
        self.num_train_timesteps = num_train_timesteps
        self.clean: list[Tensor] = []  # clean latents of blocks 0..n-1, [B, fpb, C, H, W] each

    def commit(self, block: int, x0: Tensor) -> None:
        if block != len(self.clean):
            raise ValueError(f"blocks must be committed in order: got {block}, expected {len(self.clean)}")
        self.clean.append(x0)

    def predict(self, blocks: tuple[int, ...], x: Tensor, t: Tensor) -> Tensor:
        if blocks[0] != len(self.clean):
            raise ValueError(f"query starts at block {blocks[0]} but {len(self.clean)} blocks are committed")
        n = len(self.clean)
        xs = torch.cat([*self.clean, x], dim=1)
        ts = torch.cat([torch.zeros(x.shape[0], xs.shape[1] - x.shape[1], device=x.device), t], dim=1)
        groups = visibility_mask(n, blocks, self.rule)
        flow = self._forward(xs, ts, groups, block_frames=self.clean[0].shape[1] if n else None)
        flow = flow[:, xs.shape[1] - x.shape[1]:]
        return flow_to_x0(flow, x, t, self.num_train_timesteps)

    def _forward(self, xs: Tensor, ts: Tensor, groups: Tensor, block_frames: int | None) -> Tensor:
        m = self.model
        tok = m.embed(xs, ts)
        f, h, w = tok.grid
        hw = h * w
        pt = m.cfg.patch_size[0]
        per_block = 0 if block_frames is None else block_frames // pt * hw  # tokens per committed block
        n = groups.shape[0] - 1
        spans = [(j * per_block, (j + 1) * per_block) for j in range(n)] + [(n * per_block, f * hw)]
        index = [torch.arange(a, b, device=xs.device) for a, b in spans]
        # per group: the token indices it attends to, in layout order (visible groups ascending, self last)
        plans = []
        for g in range(n + 1):
            keys = torch.cat([index[j] for j in torch.nonzero(groups[g]).flatten().tolist()])
            cos, sin = m.rope(len(keys) // hw, h, w, xs.device)
            q_len = len(index[g])
            plans.append((index[g], keys, cos, sin, cos[len(keys) - q_len:], sin[len(keys) - q_len:]))
        x = tok.x
        for i, blk in enumerate(m.blocks):
            mods = blk.mods(tok.e0)
            q, k, v = blk.attn_inputs(x, mods, f)
            out = torch.empty_like(q)
            for qi, ki, cos, sin, qcos, qsin in plans:
                out[:, qi] = attention(apply_rope(q[:, qi], qcos, qsin), apply_rope(k[:, ki], cos, sin), v[:, ki])
            x = blk.finish(x, out, mods, self.text.layer(i), f)
        return m.unpatchify(m.head(x, tok.e, f), tok.grid)
