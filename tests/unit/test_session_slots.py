"""The session slot tables: in memory for one process, and the lock table the workers of one server share.

Two SharedSlotTable instances in one process stand for two workers: their
locks belong to their descriptors, so they conflict as two processes would.
Crash-safety is checked with a real child process killed by SIGKILL.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.transports.shared.session_slots import SharedSlotTable, slot_directory
from application.sessions import Registration, InProcessSlots, SessionManager, SessionSlots, SlotToken
from domain import Session


@pytest.fixture
def directory() -> Iterator[Path]:
    with slot_directory() as path:
        yield path


def take_all(slots: SessionSlots, key: str | None = None) -> list[SlotToken]:
    taken = []
    while (token := slots.acquire(key)) is not None:
        taken.append(token)
    return taken


def test_in_process_slots_bound_each_pool_and_free_on_release() -> None:
    slots = InProcessSlots(max_sessions=3, max_per_key=1)
    server = take_all(slots)
    alice = take_all(slots, "alice")
    assert len(server) == 3 and len(alice) == 1 and slots.acquire("bob") is not None
    assert slots.in_use() == 3 and slots.in_use("alice") == 1
    slots.release(server[0])
    assert slots.in_use() == 2 and slots.acquire() is not None
    with pytest.raises(ValueError, match="not held"):
        slots.release(server[0])
    with pytest.raises(ValueError, match="no session quota"):
        InProcessSlots(max_sessions=3).acquire("alice")


def test_two_workers_share_max_sessions(directory: Path) -> None:
    one, two = SharedSlotTable(directory, 5), SharedSlotTable(directory, 5)
    first = [one.acquire() for _ in range(3)]
    assert None not in first
    assert len(take_all(two)) == 2, "the second worker gets only what the first left"
    assert one.acquire() is None and one.in_use() == two.in_use() == 5
    one.release(first[0])
    assert one.in_use() == 4
    assert two.acquire() is not None, "a slot one worker releases is the other's to take"
    assert one.acquire() is None


def test_key_pools_are_apart_from_the_server_pool_and_from_each_other(directory: Path) -> None:
    one, two = SharedSlotTable(directory, 10, max_per_key=2), SharedSlotTable(directory, 10, max_per_key=2)
    assert one.acquire("alice") is not None and two.acquire("alice") is not None
    assert one.acquire("alice") is None and two.acquire("alice") is None
    assert two.in_use("alice") == 2 and two.acquire("bob") is not None and one.in_use() == 0
    with pytest.raises(ValueError, match="no session quota"):
        SharedSlotTable(directory, 10).acquire("alice")


def test_close_gives_back_every_slot(directory: Path) -> None:
    one, two = SharedSlotTable(directory, 4, max_per_key=1), SharedSlotTable(directory, 4, max_per_key=1)
    take_all(one)
    one.acquire("alice")
    one.close()
    assert len(take_all(two)) == 4 and two.acquire("alice") is not None


def test_the_only_free_slot_is_found_wherever_it_lies(directory: Path) -> None:
    holders = [SharedSlotTable(directory, 64) for _ in range(3)]
    taken = [(holder, token) for i in range(64) if (token := (holder := holders[i % 3]).acquire()) is not None]
    assert len(taken) == 64
    newcomers = []  # kept open: closing one would give its slot back
    for holder, token in random.Random(7).sample(taken, 5):
        holder.release(token)
        newcomers.append(newcomer := SharedSlotTable(directory, 64))
        found = newcomer.acquire()
        assert found is not None and found.index == token.index
        assert newcomer.acquire() is None


def test_in_use_counts_scattered_locks_exactly(directory: Path) -> None:
    rng = random.Random(11)
    workers = [SharedSlotTable(directory, 200) for _ in range(4)]
    held: list[tuple[SharedSlotTable, SlotToken]] = []
    for _ in range(600):  # a long run of arrivals and departures on random workers
        if held and rng.random() < 0.45:
            worker, token = held.pop(rng.randrange(len(held)))
            worker.release(token)
        else:
            worker = rng.choice(workers)
            token = worker.acquire()
            if token is not None:
                held.append((worker, token))
        assert {w.in_use() for w in workers} == {len(held)}
    assert len({token.index for _, token in held}) == len(held) <= 200


def _hold(directory: Path, count: int, ready: multiprocessing.synchronize.Event) -> None:
    table = SharedSlotTable(directory, 8, max_per_key=2)
    for _ in range(count):
        assert table.acquire() is not None
    assert table.acquire("alice") is not None
    ready.set()
    signal.pause()


def test_a_killed_worker_s_slots_are_freed_by_the_kernel(directory: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    worker = context.Process(target=_hold, args=(directory, 5, ready))
    worker.start()
    try:
        assert ready.wait(60), "the worker did not take its slots"
        survivor = SharedSlotTable(directory, 8, max_per_key=2)
        assert survivor.in_use() == 5 and survivor.in_use("alice") == 1
        assert len(take_all(survivor)) == 3
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        assert worker.exitcode == -signal.SIGKILL
        assert survivor.in_use() == 3 and survivor.in_use("alice") == 0
        assert len(take_all(survivor)) == 5 and len(take_all(survivor, "alice")) == 2
    finally:
        if worker.is_alive():
            worker.kill()
        worker.join(10)


def _race(directory: Path, start: multiprocessing.synchronize.Barrier, results: multiprocessing.queues.Queue[int]) -> None:
    table = SharedSlotTable(directory, 50)
    start.wait(30)
    results.put(len(take_all(table)))


def test_workers_racing_for_the_slots_are_granted_exactly_max_sessions(directory: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(4)
    results = context.Queue()
    racers = [context.Process(target=_race, args=(directory, start, results)) for _ in range(4)]
    for racer in racers:
        racer.start()
    granted = [results.get(timeout=60) for _ in racers]
    for racer in racers:
        racer.join(10)
    assert sum(granted) == 50, f"grants per worker: {granted}"


def test_session_manager_admits_against_the_server_wide_table(directory: Path) -> None:
    other_worker = SharedSlotTable(directory, 2)
    manager = SessionManager(2, slots=SharedSlotTable(directory, 2))
    assert other_worker.acquire() is not None

    async def on_the_loop() -> None:  # sessions register from their connection's task
        registration, handle = manager.register(Session(pipeline_id="probe"))
        assert registration is Registration.ACCEPTED and handle is not None
        assert manager.register(Session(pipeline_id="probe"))[0] is Registration.FULL
        assert manager.active_count() == 1 and manager.server_active_count() == 2
        manager.unregister(handle.session.session_id)

    asyncio.run(on_the_loop())
    assert other_worker.acquire() is not None, "unregistering gives the slot back to the server"
    with pytest.raises(ValueError, match="count to 3"):
        SessionManager(2, slots=InProcessSlots(3))


def test_the_slot_directory_is_private_and_removed_after(directory: Path) -> None:
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    SharedSlotTable(directory, 1, max_per_key=1).acquire("alice")
    assert stat.S_IMODE((directory / "key-alice.slots").stat().st_mode) == 0o600
    with slot_directory() as other:
        pass
    assert not other.exists()
