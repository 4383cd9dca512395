"""FrameOutbox: a bounded, drop-oldest frame queue with credits, control messages first, stats coalesced."""

import asyncio

import pytest

from infra.frame_queue import FrameOutbox


async def drain(outbox: FrameOutbox) -> list:
    """What `next()` hands out now without waiting."""
    out = []
    while True:
        try:
            out.append(await asyncio.wait_for(outbox.next(), 0.01))
        except TimeoutError:
            return out
        if out[-1] is None:
            return out


def test_a_full_queue_drops_the_oldest_and_counts_it():
    async def run():
        o = FrameOutbox(max_frames=2, window=1)
        for i in range(5):
            o.put_frame(b"%d" % i)
        assert o.dropped == 3 and o.waiting == 2
        assert await drain(o) == [b"3"]  # one credit: one frame out; the newest two were kept
        o.ack()
        assert await drain(o) == [b"4"]
        assert o.counters() == {"frames_sent": 2, "frames_acked": 1, "frames_dropped": 3, "frames_waiting": 0}
    asyncio.run(run())


def test_control_first_stats_coalesced_and_close_drains_control_only():
    async def run():
        o = FrameOutbox(max_frames=4, window=4)
        o.put_frame(b"f")
        o.set_stats({"type": "stats", "n": 1})
        o.set_stats({"type": "stats", "n": 2})
        o.put_control({"type": "switched"})
        assert await drain(o) == [{"type": "switched"}, {"type": "stats", "n": 2}, b"f"]
        o.put_frame(b"g")
        o.put_control({"type": "ended"})
        o.close()
        assert await drain(o) == [{"type": "ended"}, None]
    asyncio.run(run())


def test_acks_never_exceed_what_was_sent_and_sizes_are_checked():
    o = FrameOutbox(max_frames=1, window=1)
    o.ack(5)
    assert o.acked == 0 and o.in_flight == 0
    with pytest.raises(ValueError, match="max_frames >= 1"):
        FrameOutbox(max_frames=0, window=1)
