"""`serve --workers 2`: a scrape answered by either worker sums both.

Which worker accepts a connection is the kernel's choice; to put sessions on a
known worker, the test stops the other one (SIGSTOP) while it connects, so
only the running worker can accept, and resumes it (SIGCONT) afterwards.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.observability.support import FRAME, delta, records, run, scrape, settled, wait_for_records
from tests.support.client import StreamClient
from tests.support.server import RunningServer, start_server


def start_workers() -> tuple[RunningServer, list[int], Path]:
    server = start_server({"FORGESYTE_STREAM_LOG_LEVEL": "info"}, extra_args=["--workers", "2"])
    (started,) = wait_for_records(server, lambda r: r["event"] == "workers_started")
    pids = list(started["pids"])
    # /health answered means one worker is up; wait for the other before pausing either.
    wait_for_records(server, lambda r: r["event"] == "Application startup complete.", count=2, timeout=60)
    return server, pids, Path(started["metrics_dir"])


@contextmanager
def only(server: RunningServer, running: int, pids: list[int]) -> Iterator[None]:
    """Keep every worker but `running` stopped, so that new connections land on it."""
    paused = [pid for pid in pids if pid != running]
    for pid in paused:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)


async def open_sessions(server: RunningServer, count: int, frames: int) -> list[StreamClient]:
    clients = []
    for _ in range(count):
        client = await StreamClient.open(server.ws("probe"))
        for _ in range(frames):
            await client.send(FRAME)
            await client.recv()
        clients.append(client)
    return clients


def connected_pids(server: RunningServer) -> list[int]:
    return [r["pid"] for r in records(server) if r["event"] == "session_connected"]


def test_sessions_and_frames_on_both_workers_are_summed_in_every_scrape() -> None:
    server, pids, _ = start_workers()
    try:
        before = settled(server)

        async def scenario() -> list[tuple[float, float]]:
            with only(server, pids[0], pids):
                first = await open_sessions(server, 3, frames=2)
            with only(server, pids[1], pids):
                second = await open_sessions(server, 2, frames=5)
            views = []
            for _ in range(8):  # each scrape is answered by whichever worker accepts it
                now = scrape(server)
                views.append(
                    (
                        now.value("stream_sessions_active", pipeline_id="probe"),
                        delta(now, before, "stream_frames_processed_total", pipeline_id="probe"),
                    )
                )
            for client in first + second:
                await client.close()
            return views

        views = run(scenario())
        assert views == [(5, 3 * 2 + 2 * 5)] * 8
        assert sorted(connected_pids(server)) == sorted([pids[0]] * 3 + [pids[1]] * 2)
        after = settled(server)
        assert delta(after, before, "stream_frames_processed_total", pipeline_id="probe") == 16
        assert delta(after, before, "stream_sessions_closed_total", pipeline_id="probe") == 5
        assert delta(after, before, "stream_pipeline_node_duration_seconds_count", pipeline_id="probe", node_id="probe") == 16
    finally:
        server.stop()


def test_a_dead_worker_is_replaced_and_its_counts_kept() -> None:
    server, (doomed, survivor), metrics_dir = start_workers()
    try:
        assert metrics_dir.is_dir()

        async def scenario() -> None:
            with only(server, doomed, [doomed, survivor]):
                orphans = await open_sessions(server, 2, frames=3)  # left open: the worker dies under them
            with only(server, survivor, [doomed, survivor]):
                kept = await open_sessions(server, 1, frames=1)
            assert scrape(server).value("stream_sessions_active", pipeline_id="probe") == 3
            os.kill(doomed, signal.SIGKILL)
            after = settled(server, sessions=1)
            assert after.value("stream_frames_processed_total", pipeline_id="probe") == 2 * 3 + 1
            await kept[0].close()
            for orphan in orphans:
                orphan.connection.transport.abort()

        run(scenario())
        (restarted,) = wait_for_records(server, lambda r: r["event"] == "worker_restarted" and r["worker_pid"] == doomed)
        assert restarted["exitcode"] == -signal.SIGKILL
        replacement = restarted["new_worker_pid"]
        assert replacement not in (doomed, survivor)
        wait_for_records(server, lambda r: r["event"] == "Application startup complete." and r["pid"] == replacement, timeout=60)
        assert settled(server).value("stream_frames_processed_total", pipeline_id="probe") == 7

        async def on_the_replacement() -> None:
            with only(server, replacement, [replacement, survivor]):
                (client,) = await open_sessions(server, 1, frames=2)
            await client.close()

        run(on_the_replacement())
        assert connected_pids(server).count(replacement) == 1
        assert settled(server).value("stream_frames_processed_total", pipeline_id="probe") == 9
        assert server.process.poll() is None, "a crashed worker is replaced; the server keeps running"
    finally:
        server.stop()
    assert not metrics_dir.exists(), "the supervisor removes its metrics directory at exit"


def test_ctrl_c_on_every_process_leaves_only_json_lines_and_no_metrics_directory() -> None:
    server, pids, metrics_dir = start_workers()
    try:
        for pid in (server.process.pid, *pids):  # a terminal's Ctrl-C reaches the whole process group
            os.kill(pid, signal.SIGINT)
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
    lines: list[dict[str, Any]] = records(server)  # json.loads every line
    exited = [r["worker_pid"] for r in lines if r["event"] == "worker_exited"]
    assert sorted(exited) == sorted(pids)
    assert {r["pid"] for r in lines} == {server.process.pid, *pids}
    assert not metrics_dir.exists()
    assert "KeyboardInterrupt" not in json.dumps(lines)
