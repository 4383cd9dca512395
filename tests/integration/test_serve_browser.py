"""`rollforge serve` for real: the CLI on uvicorn, the page in headless Chromium, and Ctrl-C mid-stream.

The browser is Debian's `chromium` package, driven by Playwright's Python package through
`executable_path` (no browser download). `.ci/run` installs it; elsewhere the browser test skips
with the reason. ROLLFORGE_SERVE_SCREENSHOT=FILE.png saves the page mid-stream (docs/img/serve.png).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# the machine's closed network: nothing in the browser may try to phone home
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.timeout(180)


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    lines: queue.Queue
    tmp: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`rollforge serve --port 0` on the tiny config, its temp files under a directory of our own."""
    tmp = tmp_path_factory.mktemp("serve")
    exe = shutil.which("rollforge") or str(Path(sys.executable).parent / "rollforge")
    stderr = open(tmp / "stderr.txt", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([exe, "serve", "--config", "configs/tiny.yaml", "--port", "0", "--max-streams", "2"],
                            cwd=REPO, env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.PIPE,
                            stderr=stderr, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=120)
    except queue.Empty:
        first = ""
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", first)
    if not m:
        proc.kill()
        proc.wait()
        raise AssertionError(f"rollforge serve did not start: {first!r}\n{(tmp / 'stderr.txt').read_text()}")
    yield Server(proc, m.group(0), lines, tmp)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    stderr.close()


def test_browser_streams_the_live_view_and_switches_prompt(server):
    if CHROMIUM is None:
        pytest.skip("no Chromium: install Debian's `chromium` package (apt-get install chromium), as .ci/run does")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install -e '.[dev]'")
    shown = "Number(document.getElementById('shown').textContent)"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)  # a fresh profile each launch
        try:
            page = browser.new_page(viewport={"width": 720, "height": 760})
            page.goto(f"{server.url}?autostart=1&prompt={quote('a red ball bouncing')}")
            page.wait_for_function(f"{shown} >= 3", timeout=60_000)
            before = page.evaluate("document.getElementById('view').toDataURL()")
            n = page.evaluate(shown)
            page.wait_for_function(f"{shown} >= {n + 6}", timeout=60_000)
            after = page.evaluate("document.getElementById('view').toDataURL()")
            assert before != after, "the live view did not change"
            assert page.inner_text("#fps") != "–" and page.inner_text("#latency").endswith(" s")

            page.fill("#switch-prompt", "a blue cube in the snow")
            page.click("#switch")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('switched prompt at block')",
                                   timeout=60_000)
            assert page.inner_text("#current-prompt") == "a blue cube in the snow"
            n = page.evaluate(shown)
            page.wait_for_function(f"{shown} >= {n + 3}", timeout=60_000)
            if os.environ.get("ROLLFORGE_SERVE_SCREENSHOT"):
                page.screenshot(path=os.environ["ROLLFORGE_SERVE_SCREENSHOT"], full_page=True)
            assert page.get_attribute("#download", "href").endswith(".mp4")

            page.click("#stop")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('stream stopped')",
                                   timeout=60_000)
        finally:
            browser.close()


def test_ctrl_c_mid_stream_stops_cleanly(server):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(server.url.replace("http://", "ws://") + "ws", open_timeout=30) as ws:
        ws.send(json.dumps({"type": "start", "prompt": "a red ball"}))
        assert json.loads(ws.recv(timeout=30))["type"] == "started"
        while not isinstance(ws.recv(timeout=60), bytes):  # a frame: the stream is live
            pass
        start = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=30)
    assert server.proc.wait(timeout=60) == 0
    rest, deadline = "", time.monotonic() + 10
    while "rollforge serve: stopped" not in rest and time.monotonic() < deadline:
        try:
            rest += server.lines.get(timeout=1)
        except queue.Empty:
            pass
    assert "rollforge serve: stopped" in rest
    assert "Traceback" not in (server.tmp / "stderr.txt").read_text()
    assert time.monotonic() - start < 30
    assert not list(server.tmp.glob("rollforge-serve-*")), "the stream's temp files were left behind"
