"""One live stream of `rollforge serve`: a thread that turns a prompt into JPEG frames and an mp4.

Generation runs on its own thread so the event loop keeps serving other clients while a block is
computed. Streams share one model; `model_lock` makes them take turns block by block (so N streams
each get about 1/N of the model's throughput, and the model never sees two threads at once).

A prompt switch lands at the next block boundary through the generator's own mechanism: between two
blocks of `stream_video`, `backend.switch_text` gives cross-attention the new prompt and recomputes
the cached recent blocks' K/V under it (the KV re-cache), exactly what a `PromptSchedule` entry at
that block does. The ack names the first block generated under the new prompt.

Generation keeps at most PACE_LEAD_S of video ahead of real time (counted from the first frame):
a viewer plays frames at the video's fps, so a model faster than that would only fill the client's
queue and have its frames dropped; paced, it plays smoothly and leaves the GPU to other streams.
`model_fps` says what the model could do (frames per second of its own compute), `fps` what was
delivered (frames per second of wall time, as `bench stream` counts).

The stream's mp4 is fragmented (one fragment per frame) and written as frames finish, so the bytes
up to `mp4_bytes` always form a playable file: a download mid-stream gets what was streamed so far.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

from PIL import Image

# empty_moov + a fragment per frame: the file is valid at every fragment boundary, never rewritten;
# zerolatency: x264 emits each frame's packet at once (no lookahead), so fragments keep up with frames.
MP4_CONTAINER_OPTIONS = {"movflags": "empty_moov+default_base_moof+frag_every_frame", "flush_packets": "1"}
MP4_CODEC_OPTIONS = {"tune": "zerolatency"}
JPEG_QUALITY = 85
PACE_LEAD_S = 1.0


def encode_jpeg(frame) -> bytes:
    """uint8 [H, W, 3] -> JPEG bytes (the live view's wire format)."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


class LiveStream:
    """Starts generating on `start()`; `switch(prompt)` and `stop()` may be called from any thread.

    Results reach the event loop `loop` only through call_soon_threadsafe: each JPEG via `on_frame`,
    messages (stats, switched, error) via `on_control`; `done` (a future of `loop`) resolves when the
    thread has finished and the mp4 is closed.
    """

    def __init__(self, stream_id: str, generator, model_lock: threading.Lock, prompt: str, sampler: str,
                 mp4_path: Path, loop: asyncio.AbstractEventLoop, on_frame, on_control):
        self.id = stream_id
        self.prompt = prompt
        self.mp4_path = mp4_path
        self.mp4_bytes = 0  # the playable prefix of the mp4 so far (whole fragments only)
        self.finished = False
        self.done: asyncio.Future = loop.create_future()
        self._gen, self._lock, self._sampler = generator, model_lock, sampler
        self._loop, self._on_frame, self._on_control = loop, on_frame, on_control
        self._stop = threading.Event()
        self._pending_lock = threading.Lock()
        self._pending: str | None = None
        self._started_at = time.perf_counter()
        self.blocks = 0
        self.frames = 0
        self.compute_s = 0.0
        self.first_frame_latency_s: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"rollforge-stream-{stream_id}", daemon=True)

    # ---------------------------------------------------------------- control (any thread)
    def start(self) -> None:
        self._started_at = time.perf_counter()
        self._thread.start()

    def switch(self, prompt: str) -> None:
        """Use `prompt` from the next block boundary on (a newer request replaces one not yet applied)."""
        with self._pending_lock:
            self._pending = prompt

    def stop(self) -> None:
        """Stop after the block being computed; the mp4 is then closed and `done` resolves."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def stats(self) -> dict:
        wall = time.perf_counter() - self._started_at
        return {"blocks": self.blocks, "frames_generated": self.frames, "elapsed_s": round(wall, 3),
                "fps": round(self.frames / wall, 2) if wall > 0 else 0.0,
                "model_fps": round(self.frames / self.compute_s, 2) if self.compute_s > 0 else 0.0,
                "first_frame_latency_s": None if self.first_frame_latency_s is None
                else round(self.first_frame_latency_s, 3)}

    # ---------------------------------------------------------------- generation thread
    def _post(self, fn, *args) -> bool:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
            return True
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._stop.set()
            return False

    def _take_switch(self) -> str | None:
        with self._pending_lock:
            prompt, self._pending = self._pending, None
        return prompt

    def _run(self) -> None:
        from pipeline.generator import PromptSchedule
        from pipeline.video_io import Mp4Writer

        cfg = self._gen.cfg
        reason = "stopped"
        try:
            with Mp4Writer(self.mp4_path, cfg.video.fps, cfg.video.width, cfg.video.height,
                           options=MP4_CODEC_OPTIONS, container_options=MP4_CONTAINER_OPTIONS) as writer:
                backends: list = []
                frames_iter = self._gen.stream_video(PromptSchedule.single(self.prompt), None, self._sampler,
                                                     backend_out=backends)
                try:
                    while not self._stop.is_set():
                        with self._lock:
                            t0 = time.perf_counter()
                            frames = next(frames_iter, None)
                            if frames is None:  # a finite sampler ran out
                                reason = "ended"
                                break
                            switched = self._take_switch()
                            if switched is not None:  # the KV re-cache: before the next block is computed
                                backends[0].switch_text(self._gen.text_cond(switched))
                            self.compute_s += time.perf_counter() - t0
                        if self.first_frame_latency_s is None:
                            self.first_frame_latency_s = time.perf_counter() - self._started_at
                        writer.write(frames)
                        self.mp4_bytes = self.mp4_path.stat().st_size
                        self.blocks += 1
                        self.frames += len(frames)
                        for frame in frames:
                            self._post(self._on_frame, encode_jpeg(frame))
                        if switched is not None:
                            self.prompt = switched
                            self._post(self._on_control, {"type": "switched", "prompt": switched,
                                                          "block": self.blocks})
                        self._post(self._on_control, {"type": "stats", **self.stats()})
                        self._pace(cfg.video.fps)
                finally:
                    frames_iter.close()
        except Exception as e:  # a generation failure ends this stream, not the server
            reason = "error"
            self._post(self._on_control, {"type": "error", "code": "generation",
                                          "message": f"generation failed: {type(e).__name__}: {e}"})
        finally:
            self.mp4_bytes = self.mp4_path.stat().st_size if self.mp4_path.exists() else 0
            self.finished = True
            self._post(self._finish, reason)

    def _pace(self, fps: int) -> None:
        """Wait while more than PACE_LEAD_S of video is ahead of real time (a stop ends the wait)."""
        played = time.perf_counter() - self._started_at - self.first_frame_latency_s
        ahead = self.frames / fps - played
        if ahead > PACE_LEAD_S:
            self._stop.wait(ahead - PACE_LEAD_S)

    def _finish(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_result(reason)
