"""What every forward of a 12-block stream sees, against tables written by hand from the reference.

The tables were read off TencentARC/RollingForcing (`wan/modules/causal_model.py`,
`CausalWanSelfAttention.forward` with a KV cache; `pipeline/rolling_forcing_inference.py`):

* window pass over blocks f..f+q-1 (f > 0): the anchor (block 0) plus the working cache, the last
  `21 - 3q - 3` frames before the query -- i.e. the sink + the C - 1 - q most recent blocks; the
  anchor is roped at `current_start_frame - working_frames - 3`, right before the working cache,
  which sits at its absolute positions right before the query: every context block is contiguous
  before the query. Windows with f = 0 attend only inside themselves.
* clean pass of block f (`updating_cache=True`): the last 21 frames of the cache ending with the
  block itself (`local_end_index - max_attention_size`), i.e. the C - 1 most recent blocks; block 0
  is among them only while f <= C - 1 (its 24-frame cache is full from block C on). Our default
  instead keeps the sink: sink + the C - 2 most recent blocks.

The spy records what the cache hands the model: the blocks of each KV-context chunk (matched to
cache entries by identity) and each chunk's RoPE frame offset relative to the query's first frame.
"""

import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.networks.wan_dit import build_dit
from pipeline.samplers import block_ar, rolling
from pipeline.schedule import denoising_levels
from pipeline.streaming import CachedBackend
from pipeline.windows import ContextRule

# (kind, query blocks, visible blocks) for every forward, in order; "W" window pass, "C" clean pass.
# Wan geometry: K = 5 steps, 1 sink block, C = 7 blocks (21 latent frames), N = 12.
WAN_DEFAULT = (
    [("W", (0,), ()), ("W", (0, 1), ()), ("W", (0, 1, 2), ()), ("W", (0, 1, 2, 3), ()),
     ("W", (0, 1, 2, 3, 4), ()), ("C", (0,), ()),
     ("W", (1, 2, 3, 4, 5), (0,)), ("C", (1,), (0,)),
     ("W", (2, 3, 4, 5, 6), (0, 1)), ("C", (2,), (0, 1)),
     ("W", (3, 4, 5, 6, 7), (0, 2)), ("C", (3,), (0, 1, 2)),
     ("W", (4, 5, 6, 7, 8), (0, 3)), ("C", (4,), (0, 1, 2, 3)),
     ("W", (5, 6, 7, 8, 9), (0, 4)), ("C", (5,), (0, 1, 2, 3, 4)),
     ("W", (6, 7, 8, 9, 10), (0, 5)), ("C", (6,), (0, 1, 2, 3, 4, 5)),
     ("W", (7, 8, 9, 10, 11), (0, 6)), ("C", (7,), (0, 2, 3, 4, 5, 6)),
     ("W", (8, 9, 10, 11), (0, 6, 7)), ("C", (8,), (0, 3, 4, 5, 6, 7)),
     ("W", (9, 10, 11), (0, 6, 7, 8)), ("C", (9,), (0, 4, 5, 6, 7, 8)),
     ("W", (10, 11), (0, 6, 7, 8, 9)), ("C", (10,), (0, 5, 6, 7, 8, 9)),
     ("W", (11,), (0, 6, 7, 8, 9, 10)), ("C", (11,), (0, 6, 7, 8, 9, 10))])
WAN_COMPAT_CLEAN = {7: (1, 2, 3, 4, 5, 6), 8: (2, 3, 4, 5, 6, 7), 9: (3, 4, 5, 6, 7, 8),
                    10: (4, 5, 6, 7, 8, 9), 11: (5, 6, 7, 8, 9, 10)}

# Tiny geometry (configs/tiny.yaml): K = 4 steps, 1 sink block, C = 6 blocks (18 frames), N = 12.
TINY_DEFAULT = (
    [("W", (0,), ()), ("W", (0, 1), ()), ("W", (0, 1, 2), ()), ("W", (0, 1, 2, 3), ()), ("C", (0,), ()),
     ("W", (1, 2, 3, 4), (0,)), ("C", (1,), (0,)),
     ("W", (2, 3, 4, 5), (0, 1)), ("C", (2,), (0, 1)),
     ("W", (3, 4, 5, 6), (0, 2)), ("C", (3,), (0, 1, 2)),
     ("W", (4, 5, 6, 7), (0, 3)), ("C", (4,), (0, 1, 2, 3)),
     ("W", (5, 6, 7, 8), (0, 4)), ("C", (5,), (0, 1, 2, 3, 4)),
     ("W", (6, 7, 8, 9), (0, 5)), ("C", (6,), (0, 2, 3, 4, 5)),
     ("W", (7, 8, 9, 10), (0, 6)), ("C", (7,), (0, 3, 4, 5, 6)),
     ("W", (8, 9, 10, 11), (0, 7)), ("C", (8,), (0, 4, 5, 6, 7)),
     ("W", (9, 10, 11), (0, 7, 8)), ("C", (9,), (0, 5, 6, 7, 8)),
     ("W", (10, 11), (0, 7, 8, 9)), ("C", (10,), (0, 6, 7, 8, 9)),
     ("W", (11,), (0, 7, 8, 9, 10)), ("C", (11,), (0, 7, 8, 9, 10))])
TINY_COMPAT_CLEAN = {6: (1, 2, 3, 4, 5), 7: (2, 3, 4, 5, 6), 8: (3, 4, 5, 6, 7), 9: (4, 5, 6, 7, 8),
                     10: (5, 6, 7, 8, 9), 11: (6, 7, 8, 9, 10)}

# Block-AR (Self-Forcing rollouts) in the tiny geometry: K forwards of block b, then its clean pass.
TINY_BLOCK_AR_VIEW = {0: (), 1: (0,), 2: (0, 1), 3: (0, 1, 2), 4: (0, 1, 2, 3), 5: (0, 1, 2, 3, 4),
                      6: (0, 2, 3, 4, 5), 7: (0, 3, 4, 5, 6), 8: (0, 4, 5, 6, 7), 9: (0, 5, 6, 7, 8),
                      10: (0, 6, 7, 8, 9), 11: (0, 7, 8, 9, 10)}

FPB = 3


def table(default: list, compat_clean: dict, compat: bool) -> list:
    if not compat:
        return default
    return [(kind, q, compat_clean.get(q[0], v) if kind == "C" else v) for kind, q, v in default]


class Spy:
    """Stands in for the model: records each forward's query, context blocks and RoPE offsets."""

    def __init__(self, model):
        self.model, self.cache, self.calls = model, None, []

    def __call__(self, x, t, text, kv_context=None, **kw):
        hw = self.model.latent_tokens
        by_id = {id(e.k): e.block for e in self.cache.entries}
        blocks, offsets, start = [], [], 0
        chunks = [] if kv_context is None else kv_context.ks
        ctx_frames = sum(k.shape[2] for k in chunks) // hw
        for k in chunks:
            blocks.append(by_id[id(k)])
            offsets.append(start - ctx_frames)
            start += k.shape[2] // hw
        self.calls.append(("C" if kw.get("return_kv") else "W", x.shape[1] // FPB, tuple(blocks), tuple(offsets)))
        return self.model(x, t, text, kv_context=kv_context, **kw)


def stream(sampler, steps, context_blocks, compat, n=12):
    cfg = ModelConfig(dim=24, ffn_dim=32, num_heads=2, num_layers=1, in_dim=4, out_dim=4, text_dim=8, text_len=4)
    model = build_dit(cfg, seed=0, zero_head=False).eval()
    model.latent_tokens = 4  # 4x4 latent, patch 2
    text = model.encode_text(torch.randn(1, 4, 8))
    spy = Spy(model)
    backend = CachedBackend.build(spy, text, ContextRule(1, context_blocks, compat))
    spy.cache = backend.cache
    levels = denoising_levels([1000, 800, 600, 400, 200][:steps], 5.0)
    fn = {"rolling": rolling, "block_ar": block_ar}[sampler]
    with torch.no_grad():
        out = [b for b, _ in fn(backend, levels, (1, FPB, 4, 4, 4), n, torch.Generator().manual_seed(0))]
    assert out == list(range(n))
    return spy.calls


@pytest.mark.parametrize("compat", [False, True], ids=["default", "reference_compat"])
@pytest.mark.parametrize("geometry", ["wan", "tiny"])
def test_rolling_stream_views_match_the_hand_written_table(geometry, compat):
    steps, context, default, compat_clean = {"wan": (5, 7, WAN_DEFAULT, WAN_COMPAT_CLEAN),
                                             "tiny": (4, 6, TINY_DEFAULT, TINY_COMPAT_CLEAN)}[geometry]
    calls = stream("rolling", steps, context, compat)
    want = table(default, compat_clean, compat)
    assert [(kind, len(q), v) for kind, q, v in want] == [(kind, nq, v) for kind, nq, v, _ in calls]
    for _kind, nq, view, offsets in calls:  # contiguous right before the query, as the reference ropes it
        assert offsets == tuple(-FPB * (len(view) - i) for i in range(len(view)))
        assert (len(view) + nq) * FPB <= context * FPB


@pytest.mark.parametrize("compat", [False, True], ids=["default", "reference_compat"])
def test_block_ar_stream_views_match_the_hand_written_table(compat):
    calls = stream("block_ar", 4, 6, compat)
    want = []
    for b in range(12):
        want += [("W", 1, TINY_BLOCK_AR_VIEW[b])] * 4
        clean = TINY_COMPAT_CLEAN.get(b, TINY_BLOCK_AR_VIEW[b]) if compat else TINY_BLOCK_AR_VIEW[b]
        want.append(("C", 1, clean))
    assert want == [(kind, nq, v) for kind, nq, v, _ in calls]


def test_the_tables_differ_where_the_reference_drops_the_sink():
    """The two modes differ exactly in clean passes from block C on (the test above can fail)."""
    a, b = stream("rolling", 5, 7, False), stream("rolling", 5, 7, True)
    differ = [(x[1], x[2], y[2]) for x, y in zip(a, b) if x != y]
    assert [d[1][0] for d in differ] == [0] * 5 and len(differ) == 5  # default keeps block 0
    assert all(0 not in d[2] for d in differ)
