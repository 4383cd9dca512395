import pytest
import torch

from pipeline.kv_cache import CacheEntry, RollingKVCache


def entry(b, tokens=2):
    return CacheEntry(block=b, k=torch.full((2, 1, tokens, 1, 4), float(b)), v=torch.full((2, 1, tokens, 1, 4), -float(b)),
                      latent=torch.full((1, 1, 1, 2, 2), float(b)))


def test_sink_kept_recent_fifo_evicts_and_size_is_constant():
    c = RollingKVCache(sink_blocks=2, recent_blocks=3)
    sizes = []
    for b in range(20):
        c.commit(entry(b))
        sizes.append(c.nbytes())
    assert c.blocks == (0, 1, 17, 18, 19)
    assert len(set(sizes[5:])) == 1  # constant after warm-up
    ctx = c.context()
    ks, _ = ctx.layer(0)
    k = torch.cat(ks, 1)
    assert k.shape == (1, 10, 1, 4) and ctx.tokens == 10
    assert k[0, :, 0, 0].tolist() == [0, 0, 1, 1, 17, 17, 18, 18, 19, 19]  # layout: sink then recent


def test_views_per_forward_are_chunks_of_the_entries():
    c = RollingKVCache(1, 3)
    for b in range(6):
        c.commit(entry(b))
    view = c.context((0, 5))
    assert [k[0, 0, 0, 0, 0].item() for k in view.ks] == [0, 5]
    assert view.ks[1] is c.recent[-1].k  # no copy: the forward concatenates one layer at a time
    assert c.context((0, 5)) is view  # memoised between commits
    assert c.context(()) is None and c.held((0, 1, 2, 3, 5)) == (0, 3, 5)
    with pytest.raises(KeyError, match="not in the cache"):
        c.context((0, 2))
    c.commit(entry(6))
    assert c.context((0, 5)) is not view


def test_context_reassembled_after_commit_and_empty_is_none():
    c = RollingKVCache(1, 1)
    assert c.context() is None
    c.commit(entry(0))
    first = c.context()
    assert c.context() is first  # memoised between commits
    c.commit(entry(1))
    assert c.context().tokens == 4


def test_recommit_replaces_and_out_of_order_raises():
    c = RollingKVCache(1, 2)
    for b in range(3):
        c.commit(entry(b))
    c.commit(CacheEntry(2, torch.zeros(2, 1, 2, 1, 4), torch.zeros(2, 1, 2, 1, 4), torch.zeros(1, 1, 1, 2, 2)))
    assert c.blocks == (0, 1, 2) and c.recent[-1].k.abs().sum() == 0
    with pytest.raises(ValueError, match="committed after"):
        c.commit(entry(3))  # fills the FIFO: (0 | 2, 3)
        c.commit(entry(1))  # older than the newest recent block and no longer held

def test_no_recent_slots():
    c = RollingKVCache(1, 0)
    for b in range(5):
        c.commit(entry(b))
    assert c.blocks == (0,)


def test_state_dict_round_trip_and_geometry_check():
    c = RollingKVCache(1, 2)
    for b in range(6):
        c.commit(entry(b))
    d = RollingKVCache(1, 2)
    d.load_state_dict(c.state_dict())
    assert d.blocks == c.blocks and all(torch.equal(a, b) for a, b in zip(d.context().ks, c.context().ks))
    with pytest.raises(ValueError, match="geometry"):
        RollingKVCache(2, 2).load_state_dict(c.state_dict())
