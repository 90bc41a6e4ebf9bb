"""Runs the app under uvicorn with the settings the stream needs, and shuts it down gracefully.

On SIGTERM or SIGINT the server stops accepting connections and drains the
sessions (application.sessions.SessionManager.shutdown): each answers its
frame in flight (as pipeline_failure if FORGESYTE_STREAM_SHUTDOWN_TIMEOUT_S
passes first), answers its waiting frames as dropped and closes with 1012;
those still open 2 s after the deadline are cancelled. uvicorn's own shutdown
follows.

Every line on stdout is JSON: uvicorn is handed the same logging configuration
the app uses (adapters.observability.logs), not its own text format.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import uvicorn

from adapters.entrypoints.allocator import start_memory_return
from adapters.container import build_app, build_container
from adapters.observability.logs import configure_logging, logging_config
from adapters.observability.metrics import shared_metrics_directory, worker_exited
from adapters.transports.shared.endpoints import drain_sessions
from adapters.transports.shared.session_slots import SharedSlotTable, slot_directory
from adapters.settings import Settings
from adapters.transports.litestar.http_limits import ConnectionLimits
from adapters.transports.litestar.websocket_limits import limited_connection_classes
from adapters.entrypoints.startup import CONFIGURATION_ERRORS, CONFIGURATION_EXIT_STATUS, configuration_error_line
from application.sessions import SessionSlots

log = structlog.get_logger("forgesyte.server")


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Callable[[float], Awaitable[int]], deadline_s: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._deadline_s = deadline_s

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = type(asyncio.get_running_loop())
        # Says which event loop actually runs (FORGESYTE_STREAM_EVENT_LOOP), for whoever reads a benchmark.
        log.info("event_loop", loop=f"{loop.__module__}.{loop.__qualname__}")
        start_memory_return()  # each serving process: memory freed after a burst goes back to the system
        await super().startup(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        await self._drain(self._deadline_s)
        await super().shutdown(sockets)


# A header line as long as the websockets library accepts in an upgrade, and a head twice that.
MAX_HEADER_LINE_BYTES = 8192
MAX_HEAD_BYTES = 16384


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        max_header_line_bytes=MAX_HEADER_LINE_BYTES,
        max_head_bytes=MAX_HEAD_BYTES,
        send_timeout_s=settings.send_timeout_s,
        max_fragments=settings.ws_max_fragments,
        max_control_frames_per_s=settings.ws_max_control_frames_per_s,
    )


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn settings for JPEG streams: no per-message deflate, a message limit above the frame limit.

    The protocols are uvicorn's own with the connection limits added (adapters.transports.litestar.websocket_limits and http_limits).
    """
    http_protocol, ws_protocol = limited_connection_classes(connection_limits(settings))
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": http_protocol,
        "ws": ws_protocol,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "loop": settings.event_loop,
        "ws_per_message_deflate": False,
        "ws_max_size": settings.ws_max_size,
        "log_config": logging_config(settings.log_level),
        "log_level": settings.log_level,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": 5,
    }
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        # Both or neither, and loadable together: Settings checked that at start-up.
        options.update(ssl_certfile=str(settings.tls_cert_file), ssl_keyfile=str(settings.tls_key_file))
    options.update(overrides)
    return uvicorn.Config(app, **options)


def build_server(settings: Settings, session_slots: SessionSlots | None = None, **config_overrides: Any) -> GracefulServer:
    container = build_container(settings, session_slots)
    app = build_app(container)
    sessions = container.session_manager()
    return GracefulServer(uvicorn_config(app, settings, **config_overrides), partial(drain_sessions, sessions), settings.shutdown_timeout_s)


def serve(settings: Settings, workers: int = 1) -> int:
    """Run until stopped; the exit status for the command (0 after a requested stop)."""
    configure_logging(settings.log_level)
    if workers <= 1:
        build_server(settings).run()
        return 0
    return _serve_workers(settings, workers)


# Replacements of crashed workers allowed within any minute before the whole server stops.
MAX_RESTARTS_PER_MINUTE = 5


def _worker_main(settings: Settings, sock: socket.socket, slots_dir: Path) -> None:
    configure_logging(settings.log_level)
    try:
        slots = SharedSlotTable(slots_dir, settings.max_sessions, settings.max_sessions_per_key)
        server = build_server(settings, slots)
    except CONFIGURATION_ERRORS as error:
        print(configuration_error_line(error), file=sys.stderr, flush=True)
        sys.exit(CONFIGURATION_EXIT_STATUS)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # Ctrl-C reaches every process of the terminal's group; the worker has shut down gracefully by now.
        return


def _serve_workers(settings: Settings, workers: int) -> int:
    """Several processes sharing one listening socket, each with its own sessions and graceful shutdown.

    A worker that dies on its own (a crash, the OOM killer) is replaced, so the
    server keeps the capacity it was asked for; its clients see their
    connection drop and reconnect. Two cases stop every worker instead and
    become the command's exit status, so that the supervisor above (systemd,
    Kubernetes) sees the failure rather than a server that quietly runs on
    fewer workers or on none: a worker refusing the configuration at start-up
    (status 2; every replacement would refuse it too), and more than
    MAX_RESTARTS_PER_MINUTE replacements within a minute (status 1, a crash loop).

    Their metrics are summed through a shared prometheus-client multiprocess
    directory (see adapters.observability.metrics), and their sessions counted against
    FORGESYTE_STREAM_MAX_SESSIONS and _PER_KEY in a shared slot table
    (adapters.transports.shared.session_slots), so the limits hold for the server as a whole; a
    worker's slots are freed by the kernel when it dies. Both directories are
    created before the first worker starts and removed once the last one has exited.

    Each worker listens on a socket of its own (listening_sockets), which the
    supervisor keeps open, so connections queued for a crashed worker wait for
    its replacement instead of being refused.
    """
    socks = listening_sockets(settings.host, settings.port, workers)
    context = multiprocessing.get_context("spawn")
    with shared_metrics_directory() as metrics_dir, slot_directory() as slots_dir:
        def spawn(name: str, sock: socket.socket) -> multiprocessing.process.BaseProcess:
            process = context.Process(target=_worker_main, args=(settings, sock, slots_dir), name=name)
            sockets_of[name] = sock
            return process

        sockets_of: dict[str, socket.socket] = {}
        processes = [spawn(f"forgesyte-worker-{i}", socks[i]) for i in range(workers)]

        stop_requested: list[int] = []

        def forward(signum: int, _frame: Any) -> None:
            stop_requested.append(signum)
            for process in processes:
                if process.is_alive() and process.pid is not None:
                    try:
                        os.kill(process.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        continue

        # Installed before any worker starts, so a stop during start-up still ends in the cleanup below.
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        for process in processes:
            process.start()
        if stop_requested:
            forward(stop_requested[0], None)  # workers started after the signal have not heard it yet
        log.info(
            "workers_started",
            workers=workers,
            pids=[p.pid for p in processes],
            host=settings.host,
            port=settings.port,
            metrics_dir=str(metrics_dir),
        )
        status = 0
        restarts: collections.deque[float] = collections.deque()
        running = {process.sentinel: process for process in processes}
        while running:
            ready = set(multiprocessing.connection.wait(list(running)))
            for sentinel in [sentinel for sentinel in running if sentinel in ready]:
                process = running.pop(sentinel)
                process.join()
                assert process.pid is not None
                worker_exited(process.pid, metrics_dir)
                exitcode = process.exitcode
                if stop_requested or exitcode == 0:
                    log.info("worker_exited", worker_pid=process.pid, exitcode=exitcode)
                    continue
                now = time.monotonic()
                restarts.append(now)
                while now - restarts[0] > 60.0:
                    restarts.popleft()
                if exitcode == CONFIGURATION_EXIT_STATUS or len(restarts) > MAX_RESTARTS_PER_MINUTE:
                    cause = "configuration" if exitcode == CONFIGURATION_EXIT_STATUS else "crash_loop"
                    log.error("worker_failed", worker_pid=process.pid, exitcode=exitcode, cause=cause, stopping=len(running))
                    status = CONFIGURATION_EXIT_STATUS if cause == "configuration" else 1
                    forward(signal.SIGTERM, None)
                    continue
                replacement = spawn(process.name, sockets_of[process.name])
                processes.append(replacement)
                replacement.start()
                running[replacement.sentinel] = replacement
                log.warning("worker_restarted", worker_pid=process.pid, exitcode=exitcode, new_worker_pid=replacement.pid)
                if stop_requested:
                    forward(stop_requested[0], None)  # a stop that arrived while the replacement was starting
    for sock in socks:
        sock.close()
    return status


def listening_sockets(host: str, port: int, workers: int) -> list[socket.socket]:
    """One socket per worker, all bound to the same address with SO_REUSEPORT, so the kernel balances them.

    With one shared socket, whichever worker's event loop wakes first accepts
    every connection waiting in the queue: 38 of 40 simultaneous sessions went
    to one worker, which answered server_busy while the other had free slots.
    With a socket each, Linux hashes every new connection (by its addresses
    and ports) to one of the sockets, so sessions spread evenly whatever the
    workers are doing. The cost: a connection hashed to a worker that is stuck
    waits for it; there is no work stealing. Where SO_REUSEPORT is missing,
    the workers share one socket as before.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    count = workers if hasattr(socket, "SO_REUSEPORT") else 1
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if count > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            # Listening now, not in the worker: a connection arriving before a worker is up waits in the queue.
            sock.listen(2048)
            sock.set_inheritable(True)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks * (workers // count) if count == 1 else socks


def serve_websockets(settings: Settings) -> int:
    """`serve --transport websockets`: the stream, /health and /metrics on the websockets library, until SIGTERM or SIGINT."""
    from adapters.transports.websockets.server import run

    configure_logging(settings.log_level)
    container = build_container(settings)
    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.run(run(settings, container))
    else:
        asyncio.run(run(settings, container))
    return 0
