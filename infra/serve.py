"""`rollforge serve`: a one-page web app that streams the generator live, as JPEG frames over a WebSocket.

    app = create_app(cfg, checkpoint=None, max_streams=1)      # a Starlette (ASGI) app; uvicorn serves it

Routes (nothing else is served; no request names a file):
    GET /                      the page, infra/static/serve.html, read once when the app is made
    WS  /ws                    one stream per connection (protocol below)
    GET /streams/{id}.mp4      that stream's mp4 so far; `id` is a token the server made, only looked up

Protocol on /ws. Client -> server, JSON text:
    {"type": "start", "prompt": P}     start this connection's stream (one per connection)
    {"type": "switch", "prompt": P}    switch prompt at the next block boundary (the KV re-cache)
    {"type": "ack", "frames": n}       n more frames shown: n credits back (default 1)
    {"type": "stop"}                   stop; the server answers "ended" and closes the connection
Server -> client: binary messages are JPEG frames, text messages JSON with a "type":
    started {stream, prompt, width, height, fps, mp4}    stats {blocks, frames_*, fps, first_frame_latency_s}
    switched {prompt, block}                             ended {reason, ...final stats, mp4}
    error {code, message}    codes: busy (then closed, 1013), prompt, protocol, generation

Limits: `max_streams` live streams server-wide; prompts of 1..MAX_PROMPT_CHARS characters; client
messages up to MAX_MESSAGE_CHARS; a per-client FrameOutbox (drop-oldest, counted); WebSockets from
another origin than the page's are refused (a web page elsewhere cannot drive your GPU); the last
`keep_recordings` finished streams' mp4s are kept for download, older ones deleted, all at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .frame_queue import FrameOutbox
from .serve_stream import LiveStream

PAGE = Path(__file__).parent / "static" / "serve.html"
MAX_PROMPT_CHARS = 500
MAX_MESSAGE_CHARS = 4096
MAX_ERRORS = 32  # protocol errors per connection before it is closed (each one queues a reply)
STREAM_ID = re.compile(r"[A-Za-z0-9_-]{16}")
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_POLICY = 1008


class ProtocolError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ProtocolError("prompt", "the prompt is empty: type what the video should show")
    prompt = prompt.strip()
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ProtocolError("prompt", f"the prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    return prompt


class Streams:
    """The server's streams: live ones (at most `max_streams`) and the recent finished ones' mp4s."""

    def __init__(self, generator, sampler: str, max_streams: int, keep_recordings: int):
        self.generator, self.sampler = generator, sampler
        self.max_streams, self.keep_recordings = max_streams, keep_recordings
        self.model_lock = threading.Lock()
        self.live: dict[str, LiveStream] = {}
        self.recordings: OrderedDict[str, LiveStream] = OrderedDict()
        self._tmp = tempfile.TemporaryDirectory(prefix="rollforge-serve-")
        self.root = Path(self._tmp.name)

    def busy_message(self) -> str | None:
        if len(self.live) < self.max_streams:
            return None
        n = self.max_streams
        return (f"the server is busy: {n} stream{'s' if n != 1 else ''} already running, the limit "
                f"(--max-streams {n}); try again when one ends")

    def open(self, prompt: str, outbox: FrameOutbox, on_control) -> LiveStream:
        stream_id = secrets.token_urlsafe(12)  # 16 URL-safe characters
        loop = asyncio.get_running_loop()
        stream = LiveStream(stream_id, self.generator, self.model_lock, prompt, self.sampler,
                            self.root / stream_id / "stream.mp4", loop, outbox.put_frame, on_control)
        self.live[stream_id] = stream
        stream.done.add_done_callback(lambda _f: self._finished(stream))
        stream.start()
        return stream

    def _finished(self, stream: LiveStream) -> None:
        self.live.pop(stream.id, None)
        self.recordings[stream.id] = stream
        while len(self.recordings) > self.keep_recordings:
            _, old = self.recordings.popitem(last=False)
            shutil.rmtree(old.mp4_path.parent, ignore_errors=True)

    def find(self, stream_id: str) -> LiveStream | None:
        if not STREAM_ID.fullmatch(stream_id):
            return None
        return self.live.get(stream_id) or self.recordings.get(stream_id)

    async def close(self, timeout: float = 60.0) -> None:
        """Stop every live stream, wait for their threads (each finishes its block), delete the mp4s."""
        live = list(self.live.values())
        for stream in live:
            stream.stop()
        if live:
            await asyncio.wait([asyncio.ensure_future(s.done) for s in live], timeout=timeout)
        await run_in_threadpool(lambda: [s.join(timeout) for s in live])
        self._tmp.cleanup()

    def close_now(self, timeout: float = 10.0) -> None:
        """Without an event loop (after the server has stopped): stop, join briefly, delete. Idempotent."""
        for stream in list(self.live.values()):
            stream.stop()
            stream.join(timeout)
        self._tmp.cleanup()


def _same_origin(ws: WebSocket) -> bool:
    """Browsers send Origin on WebSocket handshakes; it must be this server (non-browser clients send none)."""
    origin = ws.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == ws.headers.get("host")


async def _send_loop(ws: WebSocket, outbox: FrameOutbox, stream: LiveStream) -> None:
    """Send what the outbox gives until it closes, then close the connection; a send failing stops the stream."""
    try:
        while (message := await outbox.next()) is not None:
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                if message.get("type") == "stats":
                    message = {**message, **outbox.counters()}
                await ws.send_text(json.dumps(message))
        await ws.close()
    except Exception:  # the client went away mid-send
        stream.stop()


async def _session(ws: WebSocket, streams: Streams, outbox_args: dict) -> None:
    """One connection: read client messages until it goes away; the stream stops with it."""
    stream: LiveStream | None = None
    outbox: FrameOutbox | None = None
    sender: asyncio.Task | None = None
    errors = 0

    async def reply_error(code: str, message: str) -> None:
        payload = {"type": "error", "code": code, "message": message}
        if outbox is not None:
            outbox.put_control(payload)
        else:
            await ws.send_text(json.dumps(payload))

    try:
        while True:
            event = await ws.receive()
            if event["type"] == "websocket.disconnect":
                return
            text = event.get("text")
            try:
                if text is None:
                    raise ProtocolError("protocol", "send JSON text messages, e.g. {\"type\": \"start\", \"prompt\": \"...\"}")
                if len(text) > MAX_MESSAGE_CHARS:
                    raise ProtocolError("protocol", f"message of {len(text)} characters; the limit is {MAX_MESSAGE_CHARS}")
                try:
                    data = json.loads(text)
                except json.JSONDecodeError:
                    raise ProtocolError("protocol", "not JSON: send e.g. {\"type\": \"stop\"}") from None
                kind = data.get("type") if isinstance(data, dict) else None
                if kind == "ack":
                    if outbox is not None:
                        frames = data.get("frames", 1)
                        outbox.ack(frames if isinstance(frames, int) else 1)
                elif kind == "start":
                    if stream is not None:
                        raise ProtocolError("protocol", "one stream per connection: this one has already started "
                                                        "(open a new connection for another stream)")
                    prompt = check_prompt(data.get("prompt"))
                    busy = streams.busy_message()
                    if busy:
                        await ws.send_text(json.dumps({"type": "error", "code": "busy", "message": busy}))
                        await ws.close(code=CLOSE_TRY_AGAIN_LATER, reason="busy: --max-streams reached")
                        return
                    outbox = FrameOutbox(**outbox_args)
                    stream = streams.open(prompt, outbox, _control_to(outbox))
                    stream.done.add_done_callback(_ended_to(outbox, stream))
                    cfg = streams.generator.cfg
                    outbox.put_control({"type": "started", "stream": stream.id, "prompt": prompt,
                                        "width": cfg.video.width, "height": cfg.video.height, "fps": cfg.video.fps,
                                        "mp4": f"/streams/{stream.id}.mp4", "max_prompt_chars": MAX_PROMPT_CHARS})
                    sender = asyncio.create_task(_send_loop(ws, outbox, stream))
                elif kind == "switch":
                    if stream is None:
                        raise ProtocolError("protocol", "no stream to switch: send start first")
                    stream.switch(check_prompt(data.get("prompt")))
                elif kind == "stop":
                    if stream is None:
                        raise ProtocolError("protocol", "no stream to stop")
                    stream.stop()
                else:
                    raise ProtocolError("protocol", f"unknown message type {kind!r}: start, switch, ack or stop")
            except ProtocolError as e:
                errors += 1
                if errors > MAX_ERRORS:
                    await ws.close(code=CLOSE_POLICY, reason=f"more than {MAX_ERRORS} bad messages")
                    return
                await reply_error(e.code, str(e))
    except (WebSocketDisconnect, RuntimeError):  # gone, or closed by our sender after "ended"
        return
    finally:
        if stream is not None:
            stream.stop()
        if sender is not None:
            sender.cancel()


def _control_to(outbox: FrameOutbox):
    def on_control(message: dict) -> None:
        (outbox.set_stats if message.get("type") == "stats" else outbox.put_control)(message)
    return on_control


def _ended_to(outbox: FrameOutbox, stream: LiveStream):
    def on_done(fut: asyncio.Future) -> None:
        outbox.put_control({"type": "ended", "reason": fut.result(), "prompt": stream.prompt, **stream.stats(),
                            **outbox.counters(), "mp4": f"/streams/{stream.id}.mp4", "mp4_bytes": stream.mp4_bytes})
        outbox.close()
    return on_done


def create_app(cfg, checkpoint: str | Path | None = None, max_streams: int = 1, *, generator=None,
               queue_frames: int = 16, window_frames: int = 8, keep_recordings: int = 8) -> Starlette:
    """The ASGI app. The model loads here (before any port is bound), unless `generator` is given:
    a StreamingGenerator to share, e.g. between apps in tests."""
    from pipeline.config import ConfigError
    from pipeline.samplers import STREAMING_SAMPLERS

    if max_streams < 1:
        raise ValueError(f"max_streams must be >= 1, got {max_streams}")
    if cfg.sampler.kind not in STREAMING_SAMPLERS:
        raise ConfigError(f"sampler.kind: serve streams without end, so it needs a causal sampler "
                          f"({', '.join(STREAMING_SAMPLERS)}), not {cfg.sampler.kind!r}")
    if generator is None:
        from pipeline.generator import StreamingGenerator

        generator = StreamingGenerator(cfg, checkpoint=checkpoint)
    page = PAGE.read_text()
    streams = Streams(generator, cfg.sampler.kind, max_streams, keep_recordings)
    outbox_args = {"max_frames": queue_frames, "window": window_frames}
    FrameOutbox(**outbox_args)  # refuse bad sizes now, not at the first stream

    async def index(_request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    async def download(request: Request) -> Response:
        stream = streams.find(request.path_params["stream_id"])
        if stream is None:
            return PlainTextResponse(f"no such stream (the last {keep_recordings} finished streams are kept)\n",
                                     status_code=404)
        size = stream.mp4_bytes
        if size == 0:
            return PlainTextResponse("no frames yet: try again once the first block has arrived\n", status_code=404)

        async def body():
            f = await run_in_threadpool(open, stream.mp4_path, "rb")
            try:
                left = size
                while left > 0:
                    chunk = await run_in_threadpool(f.read, min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)
                    yield chunk
            finally:
                f.close()

        return StreamingResponse(body(), media_type="video/mp4", headers={
            "Content-Length": str(size), "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="rollforge-{stream.id}.mp4"'})

    async def websocket(ws: WebSocket) -> None:
        if not _same_origin(ws):
            await ws.close(code=CLOSE_POLICY, reason="cross-origin WebSocket refused")
            return
        await ws.accept()
        await _session(ws, streams, outbox_args)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await streams.close()

    app = Starlette(routes=[Route("/", index), Route("/streams/{stream_id}.mp4", download),
                            WebSocketRoute("/ws", websocket)], lifespan=lifespan)
    app.state.streams = streams
    return app
