"""`rollforge serve`'s app in-process with the tiny model (random weights, real MiniLM): HTTP and WebSocket.

One StreamingGenerator is shared by every app here (loading MiniLM is the slow part); each test makes
its own app, so limits and streams do not leak between tests.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import av
import pytest
from PIL import Image
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from infra.config import load_config
from infra.schema import Config
from infra.serve import MAX_ERRORS, MAX_PROMPT_CHARS, create_app
from infra.serve_stream import encode_jpeg
from pipeline.generator import PromptSchedule, StreamingGenerator

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cfg():
    return load_config(Config, REPO / "configs/tiny.yaml")


@pytest.fixture(scope="module")
def gen(cfg):
    return StreamingGenerator(cfg)


def app_for(cfg, gen, **kw):
    return create_app(cfg, generator=gen, **kw)


def receive(ws) -> dict | bytes:
    """The next message: JSON as a dict, a frame as bytes; a close as {'type': 'closed', 'code': ...}."""
    m = ws.receive()
    if m["type"] == "websocket.close":
        return {"type": "closed", "code": m.get("code")}
    return m["bytes"] if m.get("bytes") is not None else json.loads(m["text"])


def collect(ws, until, ack: bool = True, limit_s: float = 60.0) -> tuple[list[bytes], list[dict]]:
    """Frames and messages until `until(frames, messages)` holds; each frame acknowledged when `ack`."""
    frames, messages, start = [], [], time.monotonic()
    while not until(frames, messages):
        assert time.monotonic() - start < limit_s, f"timed out; messages so far: {messages[-5:]}"
        m = receive(ws)
        if isinstance(m, bytes):
            frames.append(m)
            if ack:
                ws.send_json({"type": "ack"})
        else:
            messages.append(m)
            assert m["type"] != "closed", f"connection closed early: {messages}"
    return frames, messages


def stop_and_end(ws) -> dict:
    ws.send_json({"type": "stop"})
    _, messages = collect(ws, lambda f, ms: ms and ms[-1]["type"] == "ended", ack=False)
    assert receive(ws) == {"type": "closed", "code": 1000}
    return messages[-1]


def frames_in(mp4: bytes) -> int:
    with av.open(io.BytesIO(mp4)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_page_frames_stats_and_mp4_so_far(cfg, gen):
    with TestClient(app_for(cfg, gen)) as client:
        page = client.get("/")
        assert page.status_code == 200 and "autostart" in page.text and 'id="view"' in page.text
        with client.websocket_connect("/ws") as ws:
            ws.send_json({"type": "start", "prompt": "a red ball"})
            started = receive(ws)
            assert started["type"] == "started" and (started["width"], started["height"]) == (32, 32)
            frames, messages = collect(ws, lambda f, ms: len(f) >= 6 and any(m["type"] == "stats" for m in ms))
            img = Image.open(io.BytesIO(frames[0]))
            assert img.format == "JPEG" and img.size == (32, 32)
            assert len(set(frames)) > 1  # the view changes over time
            stats = [m for m in messages if m["type"] == "stats"][-1]
            assert stats["first_frame_latency_s"] > 0 and stats["fps"] > 0 and stats["frames_dropped"] == 0
            so_far = client.get(started["mp4"])  # mid-stream: a playable prefix
            assert so_far.status_code == 200 and so_far.headers["content-type"] == "video/mp4"
            assert frames_in(so_far.content) >= 1
            ended = stop_and_end(ws)
        assert ended["reason"] == "stopped" and ended["frames_generated"] >= 6
        whole = client.get(started["mp4"])
        assert len(whole.content) == ended["mp4_bytes"] and frames_in(whole.content) == ended["frames_generated"]
        assert client.get("/streams/AAAAAAAAAAAAAAAA.mp4").status_code == 404
        assert client.get("/streams/..%2F..%2Fpyproject.toml.mp4").status_code == 404
        assert client.get("/static/serve.html").status_code == 404


def test_prompt_switch_is_acknowledged_and_changes_the_conditioning(cfg, gen):
    first, second = "a red ball", "a blue cube in the snow"
    with TestClient(app_for(cfg, gen)) as client, client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "start", "prompt": first})
        ws.send_json({"type": "switch", "prompt": second})  # lands at the first block boundary
        frames, messages = collect(ws, lambda f, ms: any(m["type"] == "switched" for m in ms))
        ack = next(m for m in messages if m["type"] == "switched")
        assert ack["prompt"] == second and ack["block"] >= 1
        n = (ack["block"] + 2) * 3  # two blocks made under the new prompt
        more, _ = collect(ws, lambda f, ms: len(frames) + len(f) >= n)
        got = (frames + more)[:n]
        stop_and_end(ws)
    # the same stream as a PromptSchedule switching at that block: the KV re-cache path, frame for frame
    at = gen.codec.video_frames(ack["block"] * 3) / cfg.video.fps
    assert gen.block_at_second(at) == ack["block"]

    def stream(schedule):
        out = []
        for chunk in gen.stream_video(schedule, None):
            out += [encode_jpeg(f) for f in chunk]
            if len(out) >= n:
                return out[:n]

    switched = stream(PromptSchedule.from_entries([(0, first), (at, second)]))
    unswitched = stream(PromptSchedule.single(first))
    assert got == switched
    cut = ack["block"] * 3
    assert got[:cut] == unswitched[:cut] and got[cut:] != unswitched[cut:]


def test_a_slow_client_drops_frames_and_is_told(cfg, gen):
    with TestClient(app_for(cfg, gen, queue_frames=2, window_frames=1)) as client, \
            client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "start", "prompt": "a red ball"})
        # never acknowledge: one frame in flight, two queued, the rest push the oldest out
        # (the drop count may be reported before the in-flight frame arrives: wait for both)
        frames, messages = collect(ws, lambda f, ms: len(f) >= 1 and any(m.get("frames_dropped", 0) > 0 for m in ms),
                                   ack=False)
        assert len(frames) == 1
        ended = stop_and_end(ws)
    assert ended["frames_dropped"] > 0 and ended["frames_sent"] == 1
    assert ended["frames_generated"] == ended["frames_sent"] + ended["frames_dropped"] + ended["frames_waiting"]


def test_streams_beyond_the_limit_are_refused_and_a_leaving_client_frees_its_stream(cfg, gen):
    with TestClient(app_for(cfg, gen, max_streams=1)) as client:
        with client.websocket_connect("/ws") as first:
            first.send_json({"type": "start", "prompt": "a red ball"})
            assert receive(first)["type"] == "started"
            first.send_json({"type": "start", "prompt": "again"})
            assert receive(first)["message"].startswith("one stream per connection")
            with client.websocket_connect("/ws") as second:
                second.send_json({"type": "start", "prompt": "a second stream"})
                refused = receive(second)
                assert refused["code"] == "busy" and "--max-streams 1" in refused["message"]
                assert receive(second) == {"type": "closed", "code": 1013}
        # the first client went away without "stop": its stream stops and the slot frees up
        deadline = time.monotonic() + 60
        while True:
            with client.websocket_connect("/ws") as third:
                third.send_json({"type": "start", "prompt": "a third stream"})
                reply = receive(third)
                if reply["type"] == "started":
                    stop_and_end(third)
                    break
                assert reply["code"] == "busy" and time.monotonic() < deadline
            time.sleep(0.2)


def test_bad_messages_get_clear_errors(cfg, gen):
    with TestClient(app_for(cfg, gen)) as client:
        with client.websocket_connect("/ws") as ws:
            for message, expected in [
                ({"type": "start", "prompt": "   "}, "the prompt is empty"),
                ({"type": "start", "prompt": "x" * (MAX_PROMPT_CHARS + 1)},
                 f"{MAX_PROMPT_CHARS + 1} characters; the limit is {MAX_PROMPT_CHARS}"),
                ({"type": "switch", "prompt": "p"}, "no stream to switch"),
                ({"type": "dance"}, "unknown message type 'dance'"),
            ]:
                ws.send_json(message)
                reply = receive(ws)
                assert reply["type"] == "error" and expected in reply["message"], reply
            ws.send_text("not json")
            assert receive(ws)["code"] == "protocol"
            for _ in range(MAX_ERRORS):  # a client that keeps sending junk is cut off
                ws.send_json({"type": "stop"})
            replies = [receive(ws)]
            while replies[-1]["type"] != "closed":
                replies.append(receive(ws))
            assert replies[-1]["code"] == 1008 and len(replies) == MAX_ERRORS - 5 + 1  # 5 errors above
        assert client.app.state.streams.live == {}
        with pytest.raises(WebSocketDisconnect) as e, \
                client.websocket_connect("/ws", headers={"origin": "http://elsewhere.example"}):
            pass
        assert e.value.code == 1008
