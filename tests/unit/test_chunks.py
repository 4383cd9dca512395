"""Chunking is exact: every frame in exactly one chunk, at the right time, however the stream is batched."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from evaluation.chunks import Chunker, ChunkGrid, chunk_frames, span_frames, spans, to_fraction

FPS = [8, 12.5, 16, 23.976, 24, 25, 29.97, 30000 / 1001, 30, 60, "24000/1001"]
CHUNK_SECONDS = [0.25, 0.5, 1, 1.5, 2, 3, 5, 1 / 3, 0.7]


def combos(seed: int = 0, count: int = 300):
    rng = random.Random(seed)
    for _ in range(count):
        fps, c = rng.choice(FPS), rng.choice(CHUNK_SECONDS)
        if to_fraction(fps) * to_fraction(c) < 1:
            continue
        yield fps, c, rng.choice([0, 1, 2, rng.randint(0, 40), rng.randint(0, 1000)])


def test_fractions_recover_exact_rates():
    assert to_fraction(30000 / 1001) == Fraction(30000, 1001)
    assert to_fraction(29.97002997002997) == Fraction(30000, 1001)
    assert to_fraction("24000/1001") == Fraction(24000, 1001)
    assert to_fraction(1 / 3) == Fraction(1, 3)
    assert to_fraction(12.5) == Fraction(25, 2)
    with pytest.raises(ValueError):
        to_fraction(0)


def test_every_frame_in_exactly_one_chunk_at_its_time():
    checked = 0
    for fps, c, n in combos():
        chunks = chunk_frames(n, fps, c)
        owner = [k.index for k in chunks for _ in range(k.start, k.stop)]
        assert owner == sorted(owner) and len(owner) == n, (fps, c, n)  # covers 0..n-1 once, in order
        assert [k.index for k in chunks] == list(range(len(chunks)))
        f, cs = to_fraction(fps), to_fraction(c)
        for k in chunks:
            assert k.num_frames >= 1
            # frame i belongs to chunk k  <=>  k c <= i / fps < (k + 1) c, in exact arithmetic
            for i in (k.start, k.stop - 1):
                assert k.index * cs <= Fraction(i) / f < (k.index + 1) * cs, (fps, c, n, k)
            if k.start > 0:
                assert not Fraction(k.start - 1) / f >= k.index * cs
        nominal = f * cs
        for k in chunks[:-1]:
            assert not k.partial and k.num_frames in (math.floor(nominal), math.ceil(nominal))
        if chunks:
            last = chunks[-1]
            assert last.stop == n
            assert last.partial == (last.num_frames < last.nominal_stop - last.start)
        # sizes never drift: the first k chunks hold ceil(k c fps) frames
        for k in chunks:
            assert k.start == math.ceil(k.index * nominal)
        checked += 1
    assert checked > 200


def test_streaming_pieces_match_the_finite_chunking():
    rng = random.Random(1)
    for fps, c, n in combos(seed=2, count=200):
        chunker = Chunker(fps, c)
        per_chunk: dict[int, list[int]] = {}
        completed = []
        pos = 0
        while pos < n:
            size = rng.choice([1, 2, 3, 7, 12, rng.randint(1, 50)])
            size = min(size, n - pos)
            for p in chunker.push(size):
                assert 0 <= p.offset and p.offset + p.count <= size and p.count >= 1
                per_chunk.setdefault(p.chunk, []).extend(range(pos + p.offset, pos + p.offset + p.count))
                if p.completes:
                    completed.append(p.chunk)
            pos += size
        chunker.push(0)  # an empty batch is a no-op
        expected = chunk_frames(n, fps, c)
        assert {k: (v[0], v[-1] + 1) for k, v in per_chunk.items()} == {k.index: (k.start, k.stop) for k in expected}
        assert all(v == list(range(v[0], v[-1] + 1)) for v in per_chunk.values())
        tail = chunker.finish()
        complete = [k.index for k in expected if not k.partial]
        assert completed == complete
        if expected and expected[-1].partial:
            assert tail == expected[-1]
        else:
            assert tail is None
        assert [chunker.chunk(k.index) for k in expected] == expected


def test_known_geometries():
    assert [(k.start, k.stop, k.partial) for k in chunk_frames(40, 16, 1.0)] == [(0, 16, False), (16, 32, False),
                                                                              (32, 40, True)]
    ntsc = chunk_frames(91, 30000 / 1001, 1.0)
    assert [k.num_frames for k in ntsc] == [30, 30, 30, 1]  # ceil(29.97 k): 0, 30, 60, 90
    thirds = chunk_frames(16, 16, 1 / 3)
    assert [k.num_frames for k in thirds] == [6, 5, 5]  # 16/3 = 5.33: boundaries 0, 6, 11, 16
    assert not thirds[-1].partial
    cut = chunk_frames(10, 16, 1 / 3)
    assert [k.num_frames for k in cut] == [6, 4] and cut[-1].partial and cut[-1].nominal_stop == 11
    assert chunk_frames(0, 16, 1) == []
    k = chunk_frames(20, 16, 1)[1]
    assert (k.start_s, k.stop_s) == (1.0, 1.25)
    assert k.as_dict() == {"index": 1, "start_frame": 16, "stop_frame": 20, "frames": 4, "start_s": 1.0,
                           "stop_s": 1.25, "partial": True}


def test_chunks_need_a_frame_each():
    with pytest.raises(ValueError, match="at least one frame"):
        ChunkGrid.of(8, 0.1)
    with pytest.raises(ValueError):
        chunk_frames(-1, 16, 1)


def test_spans():
    assert span_frames(16, 5) == 80 and span_frames(29.97, 5) == 150 and span_frames(8, 0.01) == 1
    assert span_frames(25, 0.5) == 13  # 12.5 rounds half up
    s = spans(160, 16, 5)
    assert s["first"] == [0, 80] and s["last"] == [80, 160] and not s["overlap"]
    s = spans(100, 16, 5)
    assert s["first"] == [0, 80] and s["last"] == [20, 100] and s["overlap"]
    s = spans(30, 16, 5)
    assert s["first"] == [0, 30] and s["last"] == [0, 30]
