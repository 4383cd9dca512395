"""`rollforge serve`: the live web page (infra/serve.py) on uvicorn, bound to 127.0.0.1 unless told otherwise.

Heavy imports (torch, the model, uvicorn) happen inside the command, so `rollforge --help` stays fast.
"""

from __future__ import annotations

import argparse
import socket
import sys

from .cli_types import positive_int
from .config import load_config
from .schema import Config

EPILOG = ("Overrides: any config key as key.sub=value, e.g. sampler.kind=block_ar runtime.device=cuda. "
          "Open the printed address; /?autostart=1&prompt=TEXT starts a stream on load.")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0..65535 (0: any free port; the address printed says which)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0..65535, got {text}")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .serve import MAX_MESSAGE_CHARS, create_app

    cfg = load_config(Config, args.config, args.overrides)
    app = create_app(cfg, checkpoint=args.checkpoint, max_streams=args.max_streams)  # loads the model
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", lifespan="on",
                            ws_max_size=4 * MAX_MESSAGE_CHARS, timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        sock.close()
        raise ValueError(f"serve: cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if args.host not in LOOPBACK:
        print(f"rollforge serve: warning: listening on {args.host}: anyone who can reach it can start streams "
              f"(there is no authentication)", file=sys.stderr)
    print(f"rollforge serve: http://{shown}:{port}/  ({cfg.sampler.kind}, "
          f"{'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'random weights'}, "
          f"max {args.max_streams} stream{'s' if args.max_streams != 1 else ''}; Ctrl-C stops)", flush=True)
    try:
        # Ctrl-C / SIGTERM: uvicorn closes the connections (each stream stops with its client), runs the
        # app's shutdown (waits for the stream threads, deletes the mp4s), then re-raises the signal.
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # that re-raised Ctrl-C: the shutdown already happened, no traceback
        pass
    finally:
        app.state.streams.close_now()  # in case a second Ctrl-C skipped the app's own shutdown
    print("rollforge serve: stopped", flush=True)
    return 0


def register(sub: argparse._SubParsersAction, add_config_args) -> None:
    p = sub.add_parser(
        "serve", help="a web page that streams the generator live (prompt, start/stop, switch prompt, mp4)",
        epilog=EPILOG,
        description="Serve one page: type a prompt, watch the video as blocks finish (JPEG frames over a "
                    "WebSocket), switch the prompt mid-stream, download what was streamed as mp4. Without "
                    "--checkpoint the weights are random (seeded), as with `generate`. See docs/SERVE.md.")
    add_config_args(p)
    p.add_argument("--checkpoint", metavar="DIR", help="exported checkpoint dir (model.safetensors [+ config.json])")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it, unauthenticated)")
    p.add_argument("--port", type=port_number, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--max-streams", type=positive_int, default=1, metavar="N",
                   help="live streams at once, server-wide (default 1); more are refused with a message. "
                        "Streams share the model block by block, so each gets about 1/N of its speed")
    p.set_defaults(func=cmd_serve)
