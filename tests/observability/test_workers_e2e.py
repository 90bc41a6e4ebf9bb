"""`serve --workers 2`: a scrape answered by either worker sums both, and the session limits hold for the server.

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
import time
import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.observability.support import FRAME, delta, records, run, scrape, settled, wait_for_records
from contracts.client import StreamClient, StreamClosed
from tests.support.server import RunningServer, start_server


def start_workers(env: Mapping[str, str] | None = None) -> tuple[RunningServer, list[int], Path]:
    server = start_server({"FORGESYTE_STREAM_LOG_LEVEL": "info", **(env or {})}, extra_args=["--workers", "2"])
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
        client = await StreamClient.connect(server.ws("probe"))
        if await landed_on(server, client) != on:
            await client.close()
            placed.discarded += 1
            continue
        for _ in range(frames):
            await client.send_raw(FRAME)
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


# The session limits hold for the whole server ------------------------------------------

ALICE_KEY = "alice-7c1e5a9d3b2f4e6a8c0d"
BOB_KEY = "bob-5e3a1c9b7d2f4a6e8c0b"
# Every connection's outcome is logged by the worker that took it, with the client's address.
OUTCOMES = ("session_connected", "session_rejected", "access_refused")


@dataclass
class Attempt:
    client: StreamClient
    pid: int
    reply: dict[str, Any]
    close_code: int | None = None

    @property
    def admitted(self) -> bool:
        return "result" in self.reply


async def attempt(server: RunningServer, key: str | None = None) -> Attempt:
    """One connection sending one frame: admitted (a result, left open) or refused (the error, then the close)."""
    seen = len(server.lines)
    headers = {"Authorization": f"Bearer {key}"} if key else None
    client = await StreamClient.connect(server.ws("probe"), headers=headers)
    suffix = f":{client.connection.local_address[1]}"
    try:
        await client.send_raw(FRAME)
    except StreamClosed:
        pass  # refused before the frame went out; the error is still there to read
    reply = await client.recv()

    def outcome(record: dict[str, Any]) -> bool:
        return record["event"] in OUTCOMES and str(record.get("client", "")).endswith(suffix)

    def logged() -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            found = [r for r in (json.loads(line) for line in list(server.lines)[seen:]) if outcome(r)]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no worker logged the outcome for the client port {suffix}"
            time.sleep(0.05)

    record = await asyncio.to_thread(logged)
    result = Attempt(client, int(record["pid"]), reply)
    if not result.admitted:
        await asyncio.wait_for(client.connection.wait_closed(), 10)
        result.close_code = client.close_code
    return result


async def fill(server: RunningServer, admitted: list[Attempt], limit: int, workers: list[int], key: str | None = None) -> Counter[int]:
    """Connect until `limit` sessions are open and every worker has refused one; the refusals per worker pid.

    A worker refusing while it holds fewer than `limit` sessions itself is what
    shows the limit counts the whole server. Stops early, for the assertion to
    report it, when more than `limit` are admitted.
    """
    refused: Counter[int] = Counter()
    for _ in range(80):
        if len(admitted) > limit or (len(admitted) == limit and all(refused[pid] for pid in workers)):
            break
        result = await attempt(server, key)
        if result.admitted:
            admitted.append(result)
            continue
        assert result.reply["error"] == "server_busy" and result.close_code == 1013, (result.reply, result.close_code)
        refused[result.pid] += 1
    return refused


def server_wide(server: RunningServer) -> set[int]:
    """`sessions_active_server` as several /health calls report it; each is answered by whichever worker takes it."""
    return {server.health()["sessions_active_server"] for _ in range(6)}


async def kill_the_busiest(server: RunningServer, admitted: list[Attempt], workers: list[int]) -> tuple[list[Attempt], int]:
    """SIGKILL the worker holding most of `admitted`; its sessions are dropped. The survivors, and the replacement's pid."""
    victim, _ = Counter(a.pid for a in admitted).most_common(1)[0]
    os.kill(victim, signal.SIGKILL)
    for orphan in [a for a in admitted if a.pid == victim]:
        orphan.client.connection.transport.abort()
    (restarted,) = await asyncio.to_thread(
        wait_for_records, server, lambda r: r["event"] == "worker_restarted" and r["worker_pid"] == victim, 1, 30
    )
    replacement = int(restarted["new_worker_pid"])
    await asyncio.to_thread(
        wait_for_records, server, lambda r: r["event"] == "Application startup complete." and r["pid"] == replacement, 1, 60
    )
    workers[workers.index(victim)] = replacement
    return [a for a in admitted if a.pid != victim], replacement


async def still_served(sessions: list[Attempt]) -> None:
    for session in sessions:
        await session.client.send_raw(FRAME)
        assert "result" in await session.client.recv()


def test_max_sessions_holds_for_the_whole_server_across_workers() -> None:
    server, workers, _ = start_workers({"FORGESYTE_STREAM_MAX_SESSIONS": "3"})
    try:

        async def scenario() -> None:
            admitted: list[Attempt] = []
            refused = await fill(server, admitted, 3, workers)
            assert len(admitted) == 3, f"{len(admitted)} sessions admitted with MAX_SESSIONS=3 over 2 workers"
            assert set(refused) == set(workers), f"refusals per worker: {dict(refused)}"
            assert "the server is at its limit of 3 concurrent sessions" in (await attempt(server)).reply["detail"]
            assert await asyncio.to_thread(server_wide, server) == {3}

            closed = admitted.pop()
            await closed.client.close()
            await asyncio.to_thread(server.wait_for, lambda h: h["sessions_active_server"] == 2)
            again = await attempt(server)
            assert again.admitted, again.reply
            admitted.append(again)
            assert (await attempt(server)).reply["error"] == "server_busy"

            survivors, _ = await kill_the_busiest(server, admitted, workers)
            await still_served(survivors)
            refused = await fill(server, survivors, 3, workers)
            assert len(survivors) == 3, f"{len(survivors)} sessions open after the dead worker's were freed"
            assert set(refused) == set(workers), f"refusals per worker: {dict(refused)}"
            assert await asyncio.to_thread(server_wide, server) == {3}
            for session in survivors:
                await session.client.close()

        run(scenario())
        assert settled(server).total("stream_sessions_active") == 0
    finally:
        server.stop()


def test_max_sessions_per_key_holds_for_the_whole_server_across_workers(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"alice {ALICE_KEY}\nbob {BOB_KEY}\n", encoding="utf-8")
    server, workers, _ = start_workers(
        {
            "FORGESYTE_STREAM_API_KEYS_FILE": str(keys),
            "FORGESYTE_STREAM_MAX_SESSIONS": "10",
            "FORGESYTE_STREAM_MAX_SESSIONS_PER_KEY": "2",
        }
    )
    try:

        async def scenario() -> None:
            alice: list[Attempt] = []
            refused = await fill(server, alice, 2, workers, ALICE_KEY)
            assert len(alice) == 2, f"{len(alice)} sessions admitted for one key with MAX_SESSIONS_PER_KEY=2 over 2 workers"
            assert set(refused) == set(workers), f"refusals per worker: {dict(refused)}"
            over = await attempt(server, ALICE_KEY)
            assert "this API key is at its limit of 2 concurrent sessions" in over.reply["detail"]
            bob: list[Attempt] = []
            assert len(await fill(server, bob, 2, workers, BOB_KEY)) == 2 and len(bob) == 2, "another key has its own quota"

            closed = alice.pop()
            await closed.client.close()
            await asyncio.to_thread(server.wait_for, lambda h: h["sessions_active_server"] == 3)
            again = await attempt(server, ALICE_KEY)
            assert again.admitted, again.reply
            alice.append(again)
            assert (await attempt(server, ALICE_KEY)).reply["error"] == "server_busy"

            survivors, _ = await kill_the_busiest(server, alice, workers)
            await still_served(survivors)
            refused = await fill(server, survivors, 2, workers, ALICE_KEY)
            assert len(survivors) == 2, f"{len(survivors)} of alice's sessions open after the dead worker's were freed"
            assert set(refused) == set(workers), f"refusals per worker: {dict(refused)}"
            for session in survivors + bob:
                await session.client.close()

        run(scenario())
        refusals = [r for r in records(server) if r["event"] == "access_refused"]
        assert refusals and {r["reason"] for r in refusals} == {"key_quota"} and {r["key"] for r in refusals} == {"alice", "bob"}
        assert ALICE_KEY not in server.log_text() and BOB_KEY not in server.log_text()
    finally:
        server.stop()
