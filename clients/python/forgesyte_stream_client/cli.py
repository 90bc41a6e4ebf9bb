"""forgesyte-stream-client: stream a video, camera, stream URL or images to a ForgeSyte Stream server.

Exit status: 0 when every frame was answered; 1 when the source or the
server failed (one line on stderr says why, of bounded length, however much
the server said); 2 for a bad command line; 3 when the stream completed but
the pipeline failed on some frames.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from forgesyte_stream_client.client import Outcome, Pacing, Reconnect, Skipped, stream
from forgesyte_stream_client.errors import ClientError, StreamError, shorten
from forgesyte_stream_client.session import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_PAUSE_S, DEFAULT_REPLY_TIMEOUT_S
from forgesyte_stream_client.replies import Dropped, FrameFailed, Result, SlowDown
from forgesyte_stream_client.sources import Realtime, Source, SourceError, open_source
from forgesyte_stream_client.stats import Stats
from forgesyte_stream_client.webrtc import CODECS, TRANSPORTS, IceServer, WebRtcOptions

API_KEY_VARIABLE = "FORGESYTE_STREAM_API_KEY"
_PLAIN_PROGRESS_EVERY_S = 2.0
_ERROR_LINE_CHARS = 400


def _seconds(minimum: float, above: bool) -> Any:
    """An argparse type: a finite number of seconds, above (or at least) `minimum`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (value > minimum if above else value >= minimum) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a number of seconds {'above' if above else 'from'} {minimum:g}, got {text!r}")
        return value

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1, got {text!r}")
    return value


def _reply_json(outcome: Outcome) -> dict[str, Any]:
    reply = outcome.reply
    if isinstance(reply, (Result, Dropped, FrameFailed)):
        return reply.raw
    if isinstance(reply, Skipped):
        return {"skipped": True, "reason": reply.reason}
    assert isinstance(reply, StreamError)
    body: dict[str, Any] = {"error": reply.code, "detail": reply.detail, "close_code": reply.close_code}
    if reply.frame_index is not None:
        body["frame_index"] = reply.frame_index
    return body


def jsonl_record(outcome: Outcome) -> dict[str, Any]:
    """One --jsonl line: the source frame's index, when it was read and sent, its round trip, and the reply."""
    return {
        "frame_index": outcome.index,
        "captured_at": outcome.frame.captured_at,
        "sent_at": outcome.sent_at,
        "latency_ms": None if outcome.latency_s is None else round(outcome.latency_s * 1000, 3),
        "connection": outcome.connection,
        "server_frame_index": outcome.frame_index,
        "reply": _reply_json(outcome),
    }


class Progress:
    """A tqdm bar on a terminal; plain lines every few seconds otherwise."""

    def __init__(self, stats: Stats, stream_out: IO[str], total: int | None, enabled: bool) -> None:
        self.stats = stats
        self.out = stream_out
        self.enabled = enabled
        self.tty = enabled and stream_out.isatty()
        self._last_line = time.perf_counter()
        self._bar = None
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="frame", file=stream_out, dynamic_ncols=True, mininterval=0.25)

    def update(self) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(self.stats.line(), refresh=False)
        elif self.enabled and time.perf_counter() - self._last_line >= _PLAIN_PROGRESS_EVERY_S:
            self._last_line = time.perf_counter()
            print(self.stats.line(), file=self.out, flush=True)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.out)
        elif self.enabled:
            print(text, file=self.out, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgesyte-stream-client", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("stream", help="stream a source through a pipeline and report every frame")
    run.add_argument("source", help="video file, camera index (0), rtsp:// or http(s):// stream URL, image, folder or glob of images")
    run.add_argument("--url", required=True, help="the server, ws://HOST:PORT (or the full /ws/video/stream URL; http:// too with --transport webrtc)")
    run.add_argument("--pipeline", required=True, help="pipeline id (GET /v1/pipelines lists them)")
    run.add_argument("--jsonl", type=Path, help="write one JSON line per frame (and per warning) to this file ('-': stdout)")
    run.add_argument("--annotate", type=Path, metavar="OUT.mp4", help="write the source with every result drawn")
    pace = run.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="play a file at its native frame rate, like a camera")
    pace.add_argument("--fps", type=float, help="send exactly this many frames per second, whatever the server says")
    run.add_argument("--quality", type=int, help="re-encode every frame as JPEG at this quality, 1-100 (default: JPEG inputs as they are, others at 80)")
    run.add_argument("--api-key", default=None, help=f"credential sent as 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE})")
    run.add_argument(
        "--reconnect-attempts",
        type=int,
        default=5,
        help="connection attempts after the first, in the whole run, on 1012 (restart) and 1013 (busy): at most 1 + N connections; "
        "a connection that stayed open 5 minutes gives them back; 0 to fail at once (default: 5)",
    )
    run.add_argument(
        "--reply-timeout",
        type=_seconds(0, above=True),
        default=DEFAULT_REPLY_TIMEOUT_S,
        metavar="S",
        help=f"end with an error when the server answers no frame (or takes none) for S seconds while one waits (default: {DEFAULT_REPLY_TIMEOUT_S:g})",
    )
    run.add_argument(
        "--max-pause",
        type=_seconds(0, above=False),
        default=DEFAULT_MAX_PAUSE_S,
        metavar="S",
        help=f"the longest pause between two frames that the server's slow_down can cause (default: {DEFAULT_MAX_PAUSE_S:g})",
    )
    run.add_argument(
        "--max-reply-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_MESSAGE_BYTES,
        metavar="N",
        help=f"end with an error when a reply is larger than N bytes (default: {DEFAULT_MAX_MESSAGE_BYTES})",
    )
    run.add_argument("--max-frames", type=int, help="stop after this many source frames")
    rtc = run.add_argument_group("transport", "WebRTC (WHIP) needs the webrtc extra: pip install 'forgesyte-stream-client[webrtc]'")
    rtc.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="websocket",
        help="websocket: one JPEG per frame; webrtc: a video track published over WHIP, results on a data channel (default: websocket)",
    )
    rtc.add_argument("--codec", choices=CODECS, default="VP8", help="webrtc: the video codec offered (default: VP8)")
    rtc.add_argument(
        "--ice-host-address",
        action="append",
        metavar="ADDR",
        help="webrtc: gather ICE host candidates on this local address only (repeatable); 127.0.0.1 for a server on this "
        "machine, which aioice skips otherwise (applied process-wide to aioice.ice.get_host_addresses)",
    )
    rtc.add_argument("--ice-server", action="append", metavar="URL", help="webrtc: a stun: or turn: URL, used with those the server's Link headers name (repeatable)")
    rtc.add_argument("--ice-username", help="webrtc: the username for the --ice-server TURN URLs")
    rtc.add_argument("--ice-credential", help="webrtc: the password for the --ice-server TURN URLs")
    rtc.add_argument("--ice-transport-policy", choices=("all", "relay"), default="all", help="webrtc: relay sends everything through TURN (default: all)")
    run.add_argument("--quiet", action="store_true", help="no progress, only the summary line")
    live = commands.add_parser("streams", help="list the server's open streams (GET /v1/streams): counts, fps, latency, nodes")
    live.add_argument("--url", required=True, help="the server, http://HOST:PORT (ws:// and wss:// are read as http:// and https://)")
    live.add_argument("--id", dest="stream_id", help="one stream's session id")
    live.add_argument("--json", action="store_true", help="print the server's JSON instead of a table")
    live.add_argument("--api-key", default=None, help=f"credential sent as 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE})")
    return parser


def run_streams(args: argparse.Namespace, out: IO[str]) -> int:
    from forgesyte_stream_client.live import fetch_streams, format_table

    streams = fetch_streams(args.url, api_key=args.api_key or os.environ.get(API_KEY_VARIABLE) or None, stream_id=args.stream_id)
    print(json.dumps(streams, indent=2) if args.json else format_table(streams), file=out, flush=True)
    return 0


def _limited(source: Source, limit: int | None) -> Any:
    for frame in source.frames():
        if limit is not None and frame.index >= limit:
            return
        yield frame


async def run_stream(args: argparse.Namespace, err: IO[str]) -> int:
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise SourceError(f"--quality must be 1-100, got {args.quality}")
    if args.fps is not None and not args.fps > 0:
        raise SourceError(f"--fps must be above 0, got {args.fps}")
    source = open_source(args.source, passthrough=args.quality is None)
    if args.realtime:
        if source.live:
            raise SourceError("--realtime applies to files; a camera or stream URL is live already")
        source = Realtime(source)
    pacing = Pacing.fixed(args.fps) if args.fps else Pacing.for_source(source)
    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    stats = Stats()
    total = min(filter(None, (source.length, args.max_frames)), default=None)
    progress = Progress(stats, err, total, not args.quiet)
    jsonl: IO[str] | None = None
    if args.jsonl is not None:
        # Line-buffered, so that the file can be followed (tail -f) while the stream runs.
        jsonl = sys.stdout if str(args.jsonl) == "-" else open(args.jsonl, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
    annotator = None
    if args.annotate is not None:
        from forgesyte_stream_client.annotate import Annotator

        annotator = Annotator(args.annotate, args.fps or source.fps or 25.0)

    def on_warning(warning: SlowDown) -> None:
        stats.slow_downs += 1
        if jsonl is not None:
            jsonl.write(json.dumps({"warning": warning.raw, "at": time.time()}) + "\n")
        progress.message(f"slow_down: the server suggests {warning.suggested_fps} frames/s (drop rate {warning.drop_rate:.2f})")

    def on_reconnect(error: ClientError, delay: float) -> None:
        stats.reconnects += 1
        if isinstance(error, StreamError):
            reason = {"error": error.code, "close_code": error.close_code, "detail": error.detail}
        else:
            reason = {"error": "connect_failed", "detail": str(error)}
        if jsonl is not None:
            jsonl.write(json.dumps({"reconnect": reason, "delay_s": round(delay, 3), "at": time.time()}) + "\n")
        progress.message(f"{error}: reconnecting in {delay:.1f} s")

    webrtc = None
    if args.transport == "webrtc":
        servers = tuple(
            IceServer((url,), args.ice_username, args.ice_credential) if url.lower().startswith(("turn:", "turns:")) else IceServer((url,))
            for url in args.ice_server or ()
        )
        webrtc = WebRtcOptions(
            codec=args.codec,
            frame_rate=args.fps or source.fps,
            ice_host_addresses=tuple(args.ice_host_address) if args.ice_host_address else None,
            ice_servers=servers,
            ice_transport_policy=args.ice_transport_policy,
        )
    outcomes = stream(
        args.url,
        args.pipeline,
        _limited(source, args.max_frames),
        live=source.live,
        prefetch=source.prefetch,
        pacing=pacing,
        quality=args.quality,
        api_key=api_key,
        reconnect=Reconnect(attempts=max(0, args.reconnect_attempts)),
        on_warning=on_warning,
        on_reconnect=on_reconnect,
        reply_timeout=args.reply_timeout,
        max_pause_s=args.max_pause,
        max_message_bytes=args.max_reply_bytes,
        transport=args.transport,
        webrtc=webrtc,
    )
    try:
        async for outcome in outcomes:
            stats.add(outcome)
            if jsonl is not None:
                jsonl.write(json.dumps(jsonl_record(outcome)) + "\n")
            if annotator is not None:
                annotator.write(outcome, stats.short())
            progress.update()
    finally:
        source.close()
        progress.close()
        if annotator is not None:
            annotator.close()
        if jsonl is not None and jsonl is not sys.stdout:
            jsonl.close()
    print(stats.summary(), file=err, flush=True)
    if stats.frames == 0:
        raise SourceError(f"{source.description}: no frames")
    return 3 if stats.failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "streams":
        try:
            return run_streams(args, sys.stdout)
        except (ClientError, ValueError) as error:
            print(f"forgesyte-stream-client: error: {shorten(str(error), _ERROR_LINE_CHARS)}", file=sys.stderr)
            return 1
    # OpenCV and its FFmpeg print their own warnings for a camera or URL that does not open; the CLI
    # says it in one line. FFmpeg reads its level when OpenCV first opens a capture, after this.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        return asyncio.run(run_stream(args, sys.stderr))
    except (ClientError, ValueError, OSError) as error:
        print(f"forgesyte-stream-client: error: {shorten(str(error), _ERROR_LINE_CHARS)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("forgesyte-stream-client: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
