"""The `forgesyte-stream` command: serve the API, or run a pipeline over a video file."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from adapters.settings import Settings, SettingsError

TRANSPORTS = ("litestar", "websockets")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgesyte-stream", description="Real-time computer-vision inference over WebSocket.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP and WebSocket server")
    serve.add_argument("--host", help="bind address (default: FORGESYTE_STREAM_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: FORGESYTE_STREAM_PORT or 8000)")
    serve.add_argument("--workers", type=int, default=1, help="server processes sharing the port (default 1; litestar only)")
    serve.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="litestar",
        help="litestar: Litestar on uvicorn, the whole HTTP API (default); websockets: the stream, /health and /metrics "
        "on the websockets library, no Litestar or uvicorn",
    )
    run_file = commands.add_parser("run-file", help="run a pipeline over a video file, one JSON line per processed frame")
    run_file.add_argument("video", help="path of a video file OpenCV can read")
    run_file.add_argument("--pipeline", required=True, help="pipeline id, see GET /v1/pipelines")
    run_file.add_argument("--stride", type=int, default=1, help="process every Nth frame (default 1)")
    run_file.add_argument("--max-frames", type=int, default=None, help="stop after this many processed frames")
    commands.add_parser("settings", help="print every environment variable with its default and meaning")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "settings":
        for variable, default, meaning in Settings.documentation():
            print(f"{variable}\t{default}\t{meaning}")
        return 0
    overrides = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        if not 1 <= args.port <= 65535:
            print(f"forgesyte-stream: --port={args.port} is out of range; expected 1-65535", file=sys.stderr)
            return 2
        overrides["port"] = args.port
    try:
        settings = Settings.from_env(**overrides)
    except SettingsError as error:
        print(f"forgesyte-stream: configuration error: {error}", file=sys.stderr)
        return 2

    # Before anything imports uvicorn's protocols or supervision's tracker, whose internals the server uses.
    from adapters.entrypoints.compat import LibraryCompatibilityError, check_library_internals

    try:
        check_library_internals()
    except LibraryCompatibilityError as error:
        print(f"forgesyte-stream: unsupported library: {error}", file=sys.stderr)
        return 2

    from adapters.entrypoints.startup import CONFIGURATION_ERRORS, CONFIGURATION_EXIT_STATUS, configuration_error_line
    from application.errors import VideoReadError
    from domain import StreamError

    try:
        if args.command == "serve":
            if args.workers < 1:
                print(f"forgesyte-stream: --workers={args.workers}; expected at least 1", file=sys.stderr)
                return 2
            if args.workers > 1 and settings.executor == "ray" and settings.ray_address is None:
                # Without an address each worker process would start a Ray instance of its own.
                print(
                    f"forgesyte-stream: configuration error: --workers={args.workers} with FORGESYTE_STREAM_EXECUTOR=ray "
                    "needs FORGESYTE_STREAM_RAY_ADDRESS (a cluster the workers share, `ray start --head`)",
                    file=sys.stderr,
                )
                return 2
            if args.workers > 1 and args.transport != "litestar":
                # Worker supervision (one SO_REUSEPORT socket per process, shared slot table) is built on uvicorn's server.
                print(f"forgesyte-stream: --workers={args.workers} needs --transport litestar", file=sys.stderr)
                return 2
            try:
                if args.transport == "websockets":
                    from adapters.entrypoints.serve import serve_websockets

                    return serve_websockets(settings)
                from adapters.entrypoints.serve import serve

                return serve(settings, workers=args.workers)
            except KeyboardInterrupt:
                # uvicorn re-raises Ctrl-C once shutdown is complete; the logs already say so.
                return 130
        if args.stride < 1:
            print(f"forgesyte-stream: --stride={args.stride}; expected at least 1", file=sys.stderr)
            return 2
        if args.max_frames is not None and args.max_frames < 1:
            print(f"forgesyte-stream: --max-frames={args.max_frames}; expected at least 1", file=sys.stderr)
            return 2
        return _run_file(settings, args.video, args.pipeline, args.stride, args.max_frames)
    except CONFIGURATION_ERRORS as error:
        print(configuration_error_line(error), file=sys.stderr)
        return CONFIGURATION_EXIT_STATUS
    except StreamError as error:
        print(f"forgesyte-stream: {error.code.value}: {error.detail}", file=sys.stderr)
        return 1
    except VideoReadError as error:
        print(f"forgesyte-stream: {error.detail}", file=sys.stderr)
        return 1


def _run_file(settings: Settings, video: str, pipeline_id: str, stride: int, max_frames: int | None) -> int:
    from adapters.container import build_container
    from adapters.observability.logs import configure_logging

    # stdout carries the results, one JSON line per frame; the logs go to stderr beside them.
    configure_logging("warning" if settings.log_level == "info" else settings.log_level, stream=sys.stderr)
    container = build_container(settings)
    service = container.video_service()
    for reply in service.run_on_file(video, pipeline_id, frame_stride=stride, max_frames=max_frames):
        sys.stdout.write(json.dumps(reply, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
