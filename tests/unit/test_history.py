"""Histories from rollout workers: kept blocks, cache priming, continued rollouts, staleness, publishing."""

from collections import Counter

import pytest
import torch

from pipeline.networks.wan_dit import build_dit
from pipeline.samplers import block_ar, rolling
from pipeline.schedule import denoising_levels
from pipeline.streaming import CachedBackend
from pipeline.windows import ContextRule
from training.history import (History, HistoryFeed, generate_history, history_source, is_stale, keep_blocks,
                              prime_cache, set_history_source, which_blocks)
from training.publish import PublishSchedule, full_weights
from training.rollouts import GradWindowBackend, rolling_grad_passes, rolling_rollout, self_forcing_rollout

SHAPE = (1, 2, 4, 4, 4)  # B, fpb, C, H, W
SINK, CONTEXT = 1, 6  # 3 denoising steps; every stream's cache holds the sink + 4 recent blocks
RULE = ContextRule(SINK, CONTEXT)
LEVELS = denoising_levels([1000, 750, 500], 5.0)


@pytest.fixture
def model(micro_cfg):
    return build_dit(micro_cfg, seed=0, zero_head=False)


@pytest.fixture
def history(model):
    return generate_history(model, torch.randn(1, 5, 8), LEVELS, SHAPE, 7, RULE,
                            torch.Generator().manual_seed(11), version=3, worker=1)


def reference_continuation(model, history, sampler, levels, n, seed):
    """No-grad CachedBackend stream that commits the history's blocks and then continues."""
    backend = CachedBackend.build(model, model.encode_text(history.text), RULE)
    fn = {"rolling": rolling, "block_ar": block_ar}[sampler]
    with torch.no_grad():
        for i, b in enumerate(history.blocks):
            backend.commit(b, history.block(i), partial=True)
        out = list(fn(backend, levels, SHAPE, n, torch.Generator().manual_seed(seed), first_block=history.num_blocks))
    return [b for b, _ in out], torch.cat([x for _, x in out], 1)


def test_which_blocks_and_staleness():
    assert which_blocks(10, ContextRule(1, 5)) == (0, 7, 8, 9)
    assert which_blocks(2, ContextRule(1, 5)) == (0, 1)
    assert which_blocks(10, ContextRule(0, 3)) == (8, 9)
    assert which_blocks(10, ContextRule(1, 5, reference_compat=True)) == (0, 6, 7, 8, 9)
    assert keep_blocks(7, 9, RULE) == (0, 3, 4, 5, 6, 7, 8)  # cuttable to 7, 8 or 9 blocks
    assert not is_stale(5, 5, 0) and is_stale(4, 5, 0) and not is_stale(3, 5, 2) and is_stale(2, 5, 2)
    assert not is_stale(7, 5, 0)  # from a newer version (a restarted learner): not stale


def test_generate_history_keeps_the_blocks_a_learner_needs(model, history):
    assert history.blocks == (0, 3, 4, 5, 6) and history.num_blocks == 7
    assert history.latents.shape == (1, 5 * 2, 4, 4, 4) and history.text.shape == (1, 5, 8)
    assert (history.version, history.worker) == (3, 1) and history.rollout_s > 0
    assert history.tokens == 7 * 2 * 4  # blocks * frames * tokens per frame (4x4 latent, patch 2)
    backend = CachedBackend.build(model, model.encode_text(history.text), RULE)
    with torch.no_grad():
        full = dict(rolling(backend, LEVELS, SHAPE, 7, torch.Generator().manual_seed(11)))
    for i, b in enumerate(history.blocks):  # the kept latents are the inference stream's
        assert torch.equal(history.block(i), full[b])
    assert torch.equal(history.tail(), torch.cat([full[b] for b in (3, 4, 5, 6)], 1))


def test_histories_cut_to_a_drawn_length_and_stack_into_a_batch(model):
    h = generate_history(model, torch.randn(1, 5, 8), LEVELS, SHAPE, 9, RULE, torch.Generator().manual_seed(1),
                         min_blocks=7)
    assert h.blocks == (0, 3, 4, 5, 6, 7, 8)
    short = h.cut(7, RULE)
    assert short.num_blocks == 7 and short.blocks == (0, 3, 4, 5, 6)
    assert torch.equal(short.block(4), h.block(4))  # block 6
    assert h.cut(9, RULE) is h and h.cut(0, RULE).blocks == ()
    with pytest.raises(ValueError, match="cannot be cut"):
        h.cut(5, RULE)  # block 2 was never kept
    other = generate_history(model, torch.randn(1, 5, 8), LEVELS, SHAPE, 9, RULE, torch.Generator().manual_seed(2),
                             min_blocks=7)
    batch = History.stack([short, other.cut(7, RULE)])
    assert batch.latents.shape == (2, 5 * 2, 4, 4, 4) and batch.text.shape == (2, 5, 8)
    with pytest.raises(ValueError, match="different lengths"):
        History.stack([short, other])
    empty = generate_history(model, torch.randn(1, 5, 8), LEVELS, SHAPE, 0, RULE, torch.Generator().manual_seed(3))
    assert empty.num_blocks == 0 and empty.blocks == () and empty.latents.shape[1] == 0


def test_prime_cache_commits_in_order_and_fifo_keeps_the_last(model, history):
    backend = CachedBackend.build(model, model.encode_text(history.text), ContextRule(SINK, 4))
    prime_cache(backend, history)
    assert backend.cache.blocks == (0, 5, 6)


@pytest.mark.parametrize("offset", [0, 1, 2])
def test_rolling_continuation_equals_a_primed_plain_stream(model, history, offset):
    n = 4
    text = model.encode_text(history.text)
    sample, finals = rolling_rollout(model, text, LEVELS, SHAPE, n, n, offset, RULE,
                                     torch.Generator().manual_seed(5), history=history)
    blocks, ref = reference_continuation(model, history, "rolling", LEVELS, n, 5)
    assert blocks == [7, 8, 9, 10]
    assert torch.allclose(finals, ref, atol=1e-5)
    assert sample.shape == (1, n * 2, 4, 4, 4) and sample.requires_grad
    sample.sum().backward()
    assert torch.isfinite(model.head.head.weight.grad).all() and model.head.head.weight.grad.abs().sum() > 0


class _CountingDict(dict):
    def __init__(self):
        super().__init__()
        self.sets = Counter()

    def __setitem__(self, key, value):
        self.sets[key] += 1
        super().__setitem__(key, value)


@pytest.mark.parametrize("offset", [0, 2])
def test_every_continued_block_gets_exactly_one_gradient_window(model, history, offset):
    n, k = 5, len(LEVELS)
    backend = GradWindowBackend(model, model.encode_text(history.text), RULE, rolling_grad_passes(n, k, offset, n))
    backend.recorded = _CountingDict()
    prime_cache(backend, history)
    out = [b for b, _ in rolling(backend, LEVELS, SHAPE, n, torch.Generator().manual_seed(0),
                                 first_block=history.num_blocks)]
    assert out == list(range(7, 12))
    assert dict(backend.recorded.sets) == {b: 1 for b in range(7, 12)}
    assert all(x.requires_grad for x in backend.recorded.values())


def test_self_forcing_continuation_equals_truncated_block_ar(model, history):
    n, exit_step = 3, 1
    text = model.encode_text(history.text)
    sample, finals = self_forcing_rollout(model, text, LEVELS, SHAPE, n, n, exit_step, RULE,
                                          torch.Generator().manual_seed(2), history=history)
    blocks, ref = reference_continuation(model, history, "block_ar", LEVELS[:exit_step + 1], n, 2)
    assert blocks == [7, 8, 9]
    assert torch.allclose(finals, ref, atol=1e-5)
    assert torch.allclose(sample.detach(), finals, atol=1e-6)  # all continued blocks scored at the exit step
    sample.square().mean().backward()
    assert model.blocks[0].self_attn.q.weight.grad.abs().sum() > 0


def test_block_ar_first_block_offsets_cache_bookkeeping(model):
    """Blocks 0..7 and the same stream shifted to 10..17 (no sink, so no block is special) agree:
    block indices only drive the cache bookkeeping, RoPE positions are relative."""
    text = model.encode_text(torch.randn(1, 5, 8))
    rule = ContextRule(0, 4)
    plain = CachedBackend.build(model, text, rule)
    shifted = CachedBackend.build(model, text, rule)
    with torch.no_grad():
        a = list(block_ar(plain, LEVELS, SHAPE, 8, torch.Generator().manual_seed(1)))
        for b, x in a[:3]:  # the first 3 blocks as a history of blocks 10..12
            shifted.commit(10 + b, x, partial=True)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3 * len(LEVELS)):  # skip the noise those 3 blocks drew
            torch.randn(SHAPE, generator=gen)
        b = list(block_ar(shifted, LEVELS, SHAPE, 5, gen, first_block=13))
    assert [i for i, _ in b] == [13, 14, 15, 16, 17] and shifted.cache.blocks == (15, 16, 17)
    assert all(torch.allclose(x, y, atol=1e-5) for (_, x), (_, y) in zip(a[3:], b))


class ListSource:
    """An in-process HistorySource over a fixed list (the protocol, without Ray)."""

    def __init__(self, histories):
        self.histories, self.published = list(histories), []

    def get(self, current_version):
        if not self.histories:
            raise TimeoutError("empty")
        return self.histories.pop(0)

    def publish(self, version, state_dict):
        self.published.append(version)

    def stats(self):
        return {"rollout/queue_depth": float(len(self.histories))}


def test_feed_drops_stale_histories_and_counts_them(history):
    def h(v):
        return History(version=v, text=history.text, latents=history.latents, blocks=history.blocks, num_blocks=7)

    feed = HistoryFeed(ListSource([h(0), h(1), h(3), h(2), h(4)]), max_staleness=1)
    got, logs = feed.next(3)
    assert got.version == 3 and logs["rollout/dropped_stale"] == 2 and logs["rollout/staleness"] == 0
    got, logs = feed.next(3)
    assert got.version == 2 and logs["rollout/staleness"] == 1 and logs["rollout/queue_depth"] == 1
    assert logs["rollout/wait_s"] >= 0 and feed.dropped_stale == 2
    with pytest.raises(TimeoutError):
        feed.next(10)  # h(4) is stale at 10 and then the source runs dry


def test_history_source_hook():
    set_history_source(None)
    with pytest.raises(RuntimeError, match="rollouts.workers"):
        history_source()
    src = ListSource([])
    set_history_source(src)
    try:
        assert history_source() is src
    finally:
        set_history_source(None)


def test_publish_schedule_and_full_weights(model):
    s = PublishSchedule(every=2)
    s.mark(0)  # construction
    assert [s.due(d) for d in range(5)] == [False, False, True, False, True]
    assert s.version(3) == 1
    resumed = PublishSchedule(every=2)
    resumed.mark(0)
    assert resumed.due(5)  # first step after a resume republishes (done % 2 != 0)
    resumed.mark(5)
    assert not resumed.due(5) and resumed.due(6)
    weights = full_weights(model)
    assert set(weights) == set(model.state_dict())
    w = weights["head.head.weight"]
    assert w.dtype == torch.float32 and torch.equal(w, model.head.head.weight)
    assert w.data_ptr() != model.head.head.weight.data_ptr()  # a copy, not a view of the live weights
