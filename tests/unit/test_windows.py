import pytest

from pipeline.windows import (ContextRule, cache_recent_blocks, context_for, gradient_passes, num_rolling_passes,
                              rolling_pass, rolling_passes, visible_blocks)


def test_staircase_start_middle_end():
    # K = 5, N = 8
    assert rolling_pass(0, 8, 5).blocks == (0,) and rolling_pass(0, 8, 5).steps == (0,)
    p = rolling_pass(2, 8, 5)
    assert p.blocks == (0, 1, 2) and p.steps == (2, 1, 0)  # oldest least noisy
    p = rolling_pass(6, 8, 5)
    assert p.blocks == (2, 3, 4, 5, 6) and p.steps == (4, 3, 2, 1, 0)
    p = rolling_pass(10, 8, 5)  # end phase: partial, no new block
    assert p.blocks == (6, 7) and p.steps == (4, 3)
    assert num_rolling_passes(8, 5) == 12
    with pytest.raises(ValueError):
        rolling_pass(12, 8, 5)


@pytest.mark.parametrize("n,k", [(1, 1), (1, 4), (7, 3), (10, 5)])
def test_every_block_walks_all_levels_once_and_finishes_in_order(n, k):
    seen = {b: [] for b in range(n)}
    finished = []
    for p in rolling_passes(n, k):
        for b, s in zip(p.blocks, p.steps):
            seen[b].append(s)
        if p.steps[0] == k - 1:
            finished.append(p.first)
    assert all(v == list(range(k)) for v in seen.values())
    assert finished == list(range(n))


def test_infinite_stream_has_no_end_phase():
    gen = rolling_passes(None, 3)
    passes = [next(gen) for _ in range(50)]
    assert all(len(p.blocks) == 3 for p in passes[2:])


def test_visible_blocks():
    assert visible_blocks(0, 1, 1) == ()
    assert visible_blocks(1, 1, 1) == (0,)
    assert visible_blocks(5, 1, 1) == (0, 4)
    assert visible_blocks(5, 2, 2) == (0, 1, 3, 4)
    assert visible_blocks(2, 2, 3) == (0, 1)
    assert visible_blocks(9, 1, 0) == (0,)
    assert visible_blocks(9, 0, 2) == (7, 8)


@pytest.mark.parametrize("n,k", [(4, 2), (9, 3), (21, 5)])
def test_gradient_windows_cover_each_block_exactly_once(n, k):
    for offset in range(k):
        counts = [0] * n
        for w in gradient_passes(n, k, offset):
            for b in rolling_pass(w, n, k).blocks:
                counts[b] += 1
        assert counts == [1] * n, (offset, counts)
    with pytest.raises(ValueError):
        gradient_passes(n, k, k)


def test_context_for_budget():
    # Wan: C = 7, S = 1, K = 5. A full window sees 1 recent block; shrinking windows 2..5; a clean pass 5.
    assert context_for(10, 5, 1, 7) == (0, 9)
    assert [len(context_for(20, q, 1, 7)) - 1 for q in (5, 4, 3, 2, 1)] == [1, 2, 3, 4, 5]
    assert context_for(20, 1, 1, 7, clean=True) == (0, 15, 16, 17, 18, 19)
    assert context_for(0, 5, 1, 7) == () and context_for(0, 1, 1, 7, clean=True) == ()
    assert context_for(3, 2, 2, 7) == (0, 1, 2)  # fewer blocks than the budget: all of them
    assert context_for(9, 1, 0, 4) == (6, 7, 8)  # no sink
    # reference_compat: only the clean pass differs -- the last C - 1 blocks, the sink only while in reach
    assert context_for(6, 1, 1, 7, clean=True, reference_compat=True) == (0, 1, 2, 3, 4, 5)
    assert context_for(7, 1, 1, 7, clean=True, reference_compat=True) == (1, 2, 3, 4, 5, 6)
    assert context_for(7, 5, 1, 7, reference_compat=True) == (0, 6)
    with pytest.raises(ValueError, match="does not fit"):
        context_for(5, 8, 1, 7)


def test_cache_size_and_rule_checks():
    assert cache_recent_blocks(1, 7) == 5 and cache_recent_blocks(1, 7, reference_compat=True) == 6
    assert ContextRule(1, 6).cache_recent == 4
    with pytest.raises(ValueError, match="1-block sink"):
        ContextRule(2, 7, reference_compat=True)
    with pytest.raises(ValueError, match="sink_blocks < context_blocks"):
        ContextRule(7, 7)


@pytest.mark.parametrize("n,k,c,s", [(12, 5, 7, 1), (12, 4, 6, 1), (30, 3, 9, 2), (9, 2, 4, 0)])
@pytest.mark.parametrize("compat", [False, True])
def test_every_forward_fits_the_context_and_the_cache_holds_it(n, k, c, s, compat):
    """Over a whole stream: each view has sink + the newest earlier blocks, fits C with its query,
    and lies inside what a cache of `cache_recent` recent blocks holds at that moment."""
    if compat and s != 1:
        return
    rule = ContextRule(s, c, compat)
    for p in rolling_passes(n, k):
        views = [(rule.window(p.first, len(p.blocks)), len(p.blocks), p.first)]
        if p.steps[0] == k - 1:
            views.append((rule.clean(p.first), 1, p.first))
        for view, q, first in views:
            assert len(view) + q <= c
            assert set(view) <= set(visible_blocks(first, s, rule.cache_recent))
            recent = [b for b in view if b >= s]
            assert recent == list(range(first - len(recent), first))  # the newest, without gaps
