import pytest

from pipeline.windows import (gradient_passes, num_rolling_passes, recent_capacity, rolling_pass, rolling_passes,
                              visible_blocks)


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


def test_recent_capacity():
    assert recent_capacity("rolling", 7, 1, 5) == 1  # Wan: 1 sink + 1 recent + 5 window
    assert recent_capacity("block_ar", 7, 1, 5) == 5
    with pytest.raises(ValueError, match="rolling, block_ar"):
        recent_capacity("bidirectional", 7, 1, 5)
