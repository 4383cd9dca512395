"""Streaming samplers: KV-cached == cache-free recompute reference; constant memory; prompt switch."""

import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.kv_cache import CacheEntry, RollingKVCache
from pipeline.networks.wan_dit import build_dit
from pipeline.reference import RecomputeBackend, visibility_mask
from pipeline.samplers import bidirectional, block_ar, rolling
from pipeline.schedule import denoising_levels
from pipeline.streaming import CachedBackend
from pipeline.windows import ContextRule

SAMPLERS = {"rolling": rolling, "block_ar": block_ar}


def run(sampler, backend, levels, shape, n, seed=7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return torch.cat([x for _, x in SAMPLERS[sampler](backend, levels, shape, n, g)], dim=1)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def model(micro_cfg):
    return build_dit(micro_cfg, seed=0, zero_head=False).eval()


@pytest.mark.parametrize("sampler", ["rolling", "block_ar"])
@pytest.mark.parametrize("sink,context_blocks,steps,compat", [(1, 5, 3, False), (2, 7, 3, False), (1, 4, 2, False),
                                                              (0, 4, 2, False), (1, 5, 3, True), (1, 7, 3, True)])
def test_cached_equals_recompute_reference(model, sampler, sink, context_blocks, steps, compat):
    levels = denoising_levels([1000, 750, 500][:steps] if steps == 3 else [1000, 500], 5.0)
    rule = ContextRule(sink, context_blocks, compat)
    text = model.encode_text(torch.randn(1, 5, 8))
    shape = (1, 2, 4, 4, 4)
    n = 14  # long enough that the FIFO evicts several times and the end phase follows
    backend = CachedBackend.build(model, text, rule)
    cached = run(sampler, backend, levels, shape, n)
    ref = run(sampler, RecomputeBackend(model, text, rule), levels, shape, n)
    assert cached.shape == (1, 2 * n, 4, 4, 4)
    assert rel(cached, ref) <= 1e-5
    assert len(backend.cache) == min(n, sink + rule.cache_recent)


def test_reference_detects_a_different_context_rule(model):
    """The equivalence test can fail: the reference-compatible rule streams differently once the
    stream is longer than the context (and a cache too small for the rule is refused)."""
    levels = denoising_levels([1000, 750, 500], 5.0)
    text = model.encode_text(torch.randn(1, 5, 8))
    shape = (1, 2, 4, 4, 4)
    cached = run("rolling", CachedBackend.build(model, text, ContextRule(1, 5)), levels, shape, 12)
    ref = run("rolling", RecomputeBackend(model, text, ContextRule(1, 5, reference_compat=True)), levels, shape, 12)
    assert rel(cached, ref) > 1e-4  # 10x the tolerance the equality tests hold to
    assert rel(cached[:, :2 * 5], ref[:, :2 * 5]) <= 1e-5  # identical until block C = 5's clean pass
    with pytest.raises(ValueError, match="cannot serve"):
        CachedBackend(model, text, RollingKVCache(1, 2), ContextRule(1, 5))


def test_visibility_mask_rows():
    m = visibility_mask(5, (5, 6), ContextRule(1, 5))  # clean passes see sink + 3 recent, the window sink + 1
    assert m[0].tolist() == [True, False, False, False, False, False]
    assert m[4].tolist() == [True, True, True, True, True, False]
    assert m[5].tolist() == [True, False, False, True, True, True]  # a 2-block query: sink + 2 recent
    c = visibility_mask(5, (5, 6), ContextRule(1, 4, reference_compat=True))
    assert c[4].tolist() == [False, True, True, True, True, False]  # the last 3 blocks, no sink


@pytest.mark.parametrize("compat", [False, True], ids=["default", "reference_compat"])
def test_cache_bytes_constant_from_20_to_120_seconds(compat):
    """A 120 s stream (16 fps, 3-frame blocks: 640 blocks = 1,920 frames, past the 1,024 frames where
    the reference's RoPE table ends) on a micro model: it runs, and the cache holds as many bytes at
    20 s as at 120 s. (`rollforge bench stream` measures the same at 600 s, on real shapes.)"""
    cfg = ModelConfig(dim=12, ffn_dim=16, num_heads=2, num_layers=1, in_dim=2, out_dim=2, text_dim=4, text_len=2)
    m = build_dit(cfg, seed=0, zero_head=False).eval()
    text = m.encode_text(torch.randn(1, 2, 4))
    rule = ContextRule(1, 4, compat)
    backend = CachedBackend.build(m, text, rule)  # 2 steps: a window sees sink + 1, a clean pass more
    cache = backend.cache
    g = torch.Generator().manual_seed(0)
    fps, fpb = 16, 3
    at = {20 * fps // fpb: None, 120 * fps // fpb: None}
    last = None
    with torch.no_grad():
        for b, x0 in rolling(backend, denoising_levels([1000, 500], 5.0), (1, fpb, 2, 2, 2), max(at), g):
            if b + 1 in at:
                at[b + 1] = cache.nbytes()
            last = x0
    assert torch.isfinite(last).all() and b + 1 == 640
    assert at[106] == at[640] > 0 and len(cache) == 1 + rule.cache_recent
    assert cache.blocks == (0, *range(640 - rule.cache_recent, 640))


def test_prompt_switch_recomputes_recent_entries_under_new_prompt(model):
    levels = denoising_levels([1000, 750, 500], 5.0)
    old, new = model.encode_text(torch.randn(1, 5, 8)), model.encode_text(torch.randn(1, 5, 8))
    rule = ContextRule(1, 5)  # the cache holds sink + 3 recent blocks
    backend = CachedBackend.build(model, old, rule)
    cache = backend.cache
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _b, _ in block_ar(backend, levels, (1, 2, 4, 4, 4), 6, g):
            pass
        sink_before = [e.k.clone() for e in cache.sink]
        recent_before = [e.k.clone() for e in cache.recent]
        backend.switch_text(new)
        # from scratch: the sink kept, recent blocks re-committed one by one under the new prompt
        scratch = RollingKVCache(1, 3)
        for e in cache.sink:
            scratch.commit(e)
        fresh = CachedBackend(model, new, scratch, rule)
        for e in list(cache.recent):
            fresh.commit(e.block, e.latent, partial=True)
    assert cache.blocks == (0, 3, 4, 5)
    assert all(torch.equal(a, e.k) for a, e in zip(sink_before, cache.sink))
    for got, want, before in zip(cache.recent, scratch.recent, recent_before):
        assert torch.allclose(got.k, want.k, atol=1e-5) and torch.allclose(got.v, want.v, atol=1e-5)
        assert not torch.allclose(got.k, before, atol=1e-4)  # the prompt really changed them
    assert backend.text is new


def test_bidirectional_teacher_cfg(model):
    text, uncond = model.encode_text(torch.randn(1, 5, 8)), model.encode_text(torch.zeros(1, 5, 8))
    outs = []
    for g_scale in (1.0, 3.0):
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            blocks = list(bidirectional(model, text, uncond, (1, 6, 4, 4, 4), 4, 5.0, g_scale, gen, 2))
        assert [b for b, _ in blocks] == [0, 1, 2]
        outs.append(torch.cat([x for _, x in blocks], 1))
    assert torch.isfinite(outs[1]).all() and not torch.allclose(outs[0], outs[1])


def test_cache_entry_bytes():
    e = CacheEntry(0, torch.zeros(2, 1, 4, 2, 8), torch.zeros(2, 1, 4, 2, 8), torch.zeros(1, 2, 4, 4, 4))
    assert e.nbytes() == (2 * 2 * 4 * 2 * 8 + 2 * 4 * 4 * 4) * 4
