"""A per-client outbox for a live stream: a bounded frame queue that drops the oldest frame when full.

A live view wants the newest frame, and a server must not buffer without bound for a client that
reads slowly (or not at all). So frames wait in a queue of fixed length; a frame arriving at a full
queue pushes out the oldest one, and every such drop is counted so the client can show it. Control
messages (acks, errors) are few and small, never dropped, and go out before waiting frames; stats
are coalesced (only the newest unsent one is kept), so nothing else grows while a client stalls.

Credits bound what is in flight beyond the queue: the client acknowledges each frame it has shown,
and at most `window` frames are sent and not yet acknowledged. Without them a slow client's frames
would pile up in socket buffers instead (seconds of latency, and no drops to count).

Everything here runs on the event loop; the generation thread reaches it via call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
from collections import deque


class FrameOutbox:
    def __init__(self, max_frames: int, window: int):
        if max_frames < 1 or window < 1:
            raise ValueError(f"an outbox needs max_frames >= 1 and window >= 1, got {max_frames} and {window}")
        self.window = window
        self._frames: deque[bytes] = deque()
        self._max_frames = max_frames
        self._control: deque[dict] = deque()
        self._stats: dict | None = None
        self._wake = asyncio.Event()
        self._closed = False
        self.queued_total = 0  # frames ever put
        self.sent = 0
        self.acked = 0
        self.dropped = 0

    # ---------------------------------------------------------------- producer side
    def put_frame(self, jpeg: bytes) -> None:
        if len(self._frames) == self._max_frames:
            self._frames.popleft()
            self.dropped += 1
        self._frames.append(jpeg)
        self.queued_total += 1
        self._wake.set()

    def put_control(self, message: dict) -> None:
        self._control.append(message)
        self._wake.set()

    def set_stats(self, message: dict) -> None:
        """The newest stats message; replaces one not yet sent."""
        self._stats = message
        self._wake.set()

    def ack(self, frames: int = 1) -> None:
        """The client has shown `frames` more frames: that many credits come back (never more than sent)."""
        self.acked = min(self.sent, self.acked + max(0, frames))
        self._wake.set()

    def close(self) -> None:
        """No more input: `next()` drains the control messages, then returns None (waiting frames and
        stats stay unsent: the last control message is expected to carry the final counts)."""
        self._closed = True
        self._wake.set()

    # ---------------------------------------------------------------- consumer side
    @property
    def in_flight(self) -> int:
        return self.sent - self.acked

    @property
    def waiting(self) -> int:
        return len(self._frames)

    async def next(self) -> dict | bytes | None:
        """The next message to send: a control dict, stats, a JPEG frame when a credit is free, or None
        once closed and drained."""
        while True:
            if self._control:
                return self._control.popleft()
            if self._closed:
                return None
            if self._stats is not None:
                message, self._stats = self._stats, None
                return message
            if self._frames and self.in_flight < self.window:
                self.sent += 1
                return self._frames.popleft()
            self._wake.clear()
            await self._wake.wait()

    def counters(self) -> dict:
        return {"frames_sent": self.sent, "frames_acked": self.acked, "frames_dropped": self.dropped,
                "frames_waiting": self.waiting}
