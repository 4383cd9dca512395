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
from pipeline.windows import recent_capacity

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
@pytest.mark.parametrize("sink,context_blocks,steps", [(1, 5, 3), (2, 7, 3), (1, 4, 2), (0, 4, 2)])
def test_cached_equals_recompute_reference(model, sampler, sink, context_blocks, steps):
    levels = denoising_levels([1000, 750, 500][:steps] if steps == 3 else [1000, 500], 5.0)
    recent = recent_capacity(sampler, context_blocks, sink, steps)
    text = model.encode_text(torch.randn(1, 5, 8))
    shape = (1, 2, 4, 4, 4)
    n = 9  # long enough that the FIFO evicts several times
    cache = RollingKVCache(sink, recent)
    cached = run(sampler, CachedBackend(model, text, cache), levels, shape, n)
    ref = run(sampler, RecomputeBackend(model, text, sink, recent), levels, shape, n)
    assert cached.shape == (1, 2 * n, 4, 4, 4)
    assert rel(cached, ref) <= 1e-5
    assert len(cache) == min(n, sink + recent)


def test_reference_detects_a_different_cache_geometry(model):
    """The equivalence test can fail: a reference with one more recent block disagrees."""
    levels = denoising_levels([1000, 750, 500], 5.0)
    text = model.encode_text(torch.randn(1, 5, 8))
    shape = (1, 2, 4, 4, 4)
    cached = run("rolling", CachedBackend(model, text, RollingKVCache(1, 1)), levels, shape, 8)
    ref = run("rolling", RecomputeBackend(model, text, 1, 2), levels, shape, 8)
    assert rel(cached, ref) > 1e-3


def test_visibility_mask_rows():
    m = visibility_mask(5, (5, 6), sink_blocks=1, recent_blocks=2)
    assert m[0].tolist() == [True, False, False, False, False, False]
    assert m[4].tolist() == [True, False, True, True, True, False]
    assert m[5].tolist() == [True, False, False, True, True, True]


def test_cache_size_constant_and_no_length_cap():
    """5,000 latent frames on a micro config: runs, and the cache stops growing after warm-up."""
    cfg = ModelConfig(dim=12, ffn_dim=16, num_heads=2, num_layers=1, in_dim=2, out_dim=2, text_dim=4, text_len=2)
    m = build_dit(cfg, seed=0, zero_head=False).eval()
    text = m.encode_text(torch.randn(1, 2, 4))
    cache = RollingKVCache(1, 1)
    backend = CachedBackend(m, text, cache)
    g = torch.Generator().manual_seed(0)
    sizes, frames, last = [], 0, None
    with torch.no_grad():
        for _b, x0 in rolling(backend, denoising_levels([1000, 500], 5.0), (1, 5, 2, 2, 2), 1000, g):
            frames += x0.shape[1]
            sizes.append(cache.nbytes())
            last = x0
    assert frames == 5000 and torch.isfinite(last).all()
    assert len(set(sizes[2:])) == 1 and cache.blocks == (0, 999)


def test_prompt_switch_recomputes_recent_entries_under_new_prompt(model):
    levels = denoising_levels([1000, 750, 500], 5.0)
    old, new = model.encode_text(torch.randn(1, 5, 8)), model.encode_text(torch.randn(1, 5, 8))
    cache = RollingKVCache(1, 3)
    backend = CachedBackend(model, old, cache)
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
        fresh = CachedBackend(model, new, scratch)
        for e in list(cache.recent):
            fresh.commit(e.block, e.latent)
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
