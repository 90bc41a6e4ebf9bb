"""`serve --workers 2`: a scrape answered by either worker sums both.

Which worker accepts a connection is the kernel's choice: each worker listens
on a socket of its own (SO_REUSEPORT) and the kernel hashes every connection
to one of them. To put sessions on a known worker, the test opens connections
until one lands there (the worker's `session_connected` log record names the
client's port) and closes the others before they send a frame; the closed
ones are counted where the assertions need them.
"""

from __future__ import annotations

import json
import os
import signal
import asyncio
from dataclasses import dataclass, field
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


@dataclass
class Placed:
    """Sessions opened on one worker, and how many sessions landed elsewhere and were closed unused."""

    clients: list[StreamClient] = field(default_factory=list)
    discarded: int = 0


async def landed_on(server: RunningServer, client: StreamClient) -> int:
    """The pid of the worker serving this client, from its session_connected record."""
    port = client.connection.local_address[1]
    (record,) = await asyncio.to_thread(
        wait_for_records, server, lambda r: r["event"] == "session_connected" and r["client"].endswith(f":{port}")
    )
    return int(record["pid"])


async def open_sessions(server: RunningServer, count: int, frames: int, *, on: int, placed: Placed | None = None) -> Placed:
    placed = placed or Placed()
    target = len(placed.clients) + count
    for _ in range(200):
        if len(placed.clients) == target:
            break
        client = await StreamClient.open(server.ws("probe"))
        if await landed_on(server, client) != on:
            await client.close()
            placed.discarded += 1
            continue
        for _ in range(frames):
            await client.send(FRAME)
            await client.recv()
        placed.clients.append(client)
    assert len(placed.clients) == target, f"no connection landed on worker {on} in 200 tries"
    return placed


def connected_pids(server: RunningServer, clients: list[StreamClient]) -> list[int]:
    ports = {f":{client.connection.local_address[1]}" for client in clients}
    return [r["pid"] for r in records(server) if r["event"] == "session_connected" and r["client"][r["client"].rindex(":") :] in ports]


def test_sessions_and_frames_on_both_workers_are_summed_in_every_scrape() -> None:
    server, pids, _ = start_workers()
    try:
        before = settled(server)

        async def scenario() -> tuple[list[tuple[float, float]], Placed, Placed]:
            first = await open_sessions(server, 3, frames=2, on=pids[0])
            second = await open_sessions(server, 2, frames=5, on=pids[1])
            await asyncio.to_thread(settled, server, 5)  # the discarded sessions have closed
            views = []
            for _ in range(8):  # each scrape is answered by whichever worker accepts it
                now = scrape(server)
                views.append(
                    (
                        now.value("stream_sessions_active", pipeline_id="probe"),
                        delta(now, before, "stream_frames_processed_total", pipeline_id="probe"),
                    )
                )
            for client in first.clients + second.clients:
                await client.close()
            return views, first, second

        views, first, second = run(scenario())
        assert views == [(5, 3 * 2 + 2 * 5)] * 8
        assert sorted(connected_pids(server, first.clients + second.clients)) == sorted([pids[0]] * 3 + [pids[1]] * 2)
        after = settled(server)
        assert delta(after, before, "stream_frames_processed_total", pipeline_id="probe") == 16
        assert delta(after, before, "stream_sessions_closed_total", pipeline_id="probe") == 5 + first.discarded + second.discarded
        assert delta(after, before, "stream_pipeline_node_duration_seconds_count", pipeline_id="probe", node_id="probe") == 16
    finally:
        server.stop()


def test_a_dead_worker_is_replaced_and_its_counts_kept() -> None:
    server, (doomed, survivor), metrics_dir = start_workers()
    try:
        assert metrics_dir.is_dir()

        async def scenario() -> None:
            orphans = (await open_sessions(server, 2, frames=3, on=doomed)).clients  # left open: the worker dies under them
            kept = (await open_sessions(server, 1, frames=1, on=survivor)).clients
            assert (await asyncio.to_thread(settled, server, 3)).value("stream_sessions_active", pipeline_id="probe") == 3
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
            (client,) = (await open_sessions(server, 1, frames=2, on=replacement)).clients
            await client.close()

        run(on_the_replacement())
        assert [r["pid"] for r in records(server) if r["event"] == "session_connected"].count(replacement) == 1
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
