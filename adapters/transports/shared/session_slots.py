"""SessionSlots shared by the workers of `serve --workers N`: byte-range locks on files in one private directory.

Each pool of slots is a file: `sessions.slots` for FORGESYTE_STREAM_MAX_SESSIONS,
`key-<name>.slots` for each API key's FORGESYTE_STREAM_MAX_SESSIONS_PER_KEY.
Slot i is byte i of its file, and a worker holds it by holding a Linux
open-file-description lock (F_OFD_SETLK) on that byte through the one
descriptor it keeps per file. Why this rather than counters in shared memory:

- Crash-safe with nobody's help: when a worker dies, even by SIGKILL, the
  kernel closes its descriptors and so drops every slot it held. Counters
  would stay taken until someone noticed the death and reset them.
- Never waits: F_OFD_SETLK fails at once on a taken byte (F_OFD_SETLKW is
  never used), so acquire can run on the event loop. Counters would need a
  cross-process lock around read-compare-increment, and a worker stopped or
  descheduled inside it would stall every other worker's event loop.
- A few system calls per connection, none per frame: F_OFD_GETLK reports a
  whole range another worker locks (its adjacent slots merge into one), so
  the search for a free byte skips taken ranges instead of trying each slot.
  The cost grows with how scattered the locks are: with 4 workers, refusing a
  connection at a full pool took 0.05 ms at 32 slots in the worst scattering
  (no two of a worker's slots adjacent), 0.6 ms at 256 and 2.4 ms at 1000, but
  0.015 ms at any size with each worker's slots side by side
  (`.venv/bin/python bench/session_slots.py`).

Open-file-description locks, unlike classic POSIX record locks, belong to the
descriptor rather than the process: two descriptors of one process conflict
like two processes, and closing some other descriptor of the same file drops
nothing. They are Linux-only (3.15 and later), which `serve --workers` needs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import shutil
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from application.sessions import SlotLimits, SlotToken, pool_limit

SESSIONS_FILE = "sessions.slots"
# struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid, padding.
_FLOCK = struct.Struct("@hhqqi4x")
_TAKEN = (errno.EAGAIN, errno.EACCES)


class SlotTableUnavailable(RuntimeError):
    """This platform has no open-file-description locks, so workers cannot share the session limits."""


def shared_slot_table_supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(fcntl, "F_OFD_SETLK") and struct.calcsize("@q") == 8


@contextlib.contextmanager
def slot_directory() -> Iterator[Path]:
    """A fresh directory, readable by this user only, for the slot files of the workers spawned inside the block."""
    if not shared_slot_table_supported():
        raise SlotTableUnavailable(
            "serve --workers needs Linux open-file-description locks (F_OFD_SETLK) to hold "
            "FORGESYTE_STREAM_MAX_SESSIONS and _PER_KEY for the whole server; run one worker on this platform"
        )
    directory = Path(tempfile.mkdtemp(prefix="forgesyte-slots-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _flock(lock_type: int, start: int, length: int) -> bytes:
    return _FLOCK.pack(lock_type, os.SEEK_SET, start, length, 0)


class SharedSlotTable(SlotLimits):
    """SessionSlots over the slot files in `directory`, one instance per worker process.

    Every call runs on the worker's event loop; the instance keeps which
    bytes it holds, since a descriptor's own lock never conflicts with itself.
    """

    def __init__(self, directory: Path, max_sessions: int, max_per_key: int = 0) -> None:
        if not shared_slot_table_supported():
            raise SlotTableUnavailable("open-file-description locks (F_OFD_SETLK) are not available on this platform")
        super().__init__(max_sessions, max_per_key)
        self._directory = directory
        self._fds: dict[str | None, int] = {}
        self._held: dict[str | None, set[int]] = {}
        self._cursor: dict[str | None, int] = {}
        self._fd(None)  # a missing or unwritable directory fails at start-up, not at the first connection

    def acquire(self, key: str | None = None) -> SlotToken | None:
        """The first free slot from where this worker's last grant ended, found by skipping whole taken ranges."""
        limit = pool_limit(self, key)
        held = self._held.setdefault(key, set())
        if len(held) >= limit:
            return None
        fd = self._fd(key)
        # Each worker starts at its own random place and goes on from its last grant, so its slots
        # tend to lie side by side, where the kernel merges them into one lock that one call skips.
        cursor = self._cursor.get(key)
        if cursor is None:
            cursor = random.randrange(limit)
        ranges = [(0, cursor), (cursor, limit)]  # a stack: the part after the cursor is searched first
        while ranges:
            start, end = ranges.pop()
            if start >= end:
                continue
            taken = self._conflict(fd, start, end)
            if taken is not None:
                ranges += [(taken[1], end), (start, taken[0])]
                continue
            # No other descriptor locks a byte of this range; this worker's own locks do not show in F_OFD_GETLK.
            index = next((i for i in range(start, end) if i not in held), None)
            if index is None:
                continue
            try:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, index, 1))
            except OSError as error:
                if error.errno not in _TAKEN:
                    raise
                ranges.append((index + 1, end))  # another worker took it since the test
                continue
            held.add(index)
            self._cursor[key] = (index + 1) % limit
            return SlotToken(key, index)
        return None

    def release(self, token: SlotToken) -> None:
        held = self._held.get(token.key, set())
        if token.index not in held:
            raise ValueError(f"slot {token} is not held")
        fcntl.fcntl(self._fds[token.key], fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, token.index, 1))
        held.discard(token.index)

    def in_use(self, key: str | None = None) -> int:
        """This worker's slots, plus the bytes locked through other descriptors, a locked range per F_OFD_GETLK."""
        limit = pool_limit(self, key)
        fd = self._fd(key)
        others = 0
        ranges = [(0, limit)]
        while ranges:
            start, end = ranges.pop()
            if start >= end:
                continue
            taken = self._conflict(fd, start, end)
            if taken is not None:
                others += taken[1] - taken[0]
                ranges += [(start, taken[0]), (taken[1], end)]
        return others + len(self._held.get(key, ()))

    @staticmethod
    def _conflict(fd: int, start: int, end: int) -> tuple[int, int] | None:
        """One range within [start, end) that another descriptor locks, or None when it locks none.

        F_OFD_GETLK reports one conflicting lock, not necessarily the lowest;
        callers ask again about the parts on either side of it, so every lock
        is found and none twice.
        """
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, start, end - start))
        lock_type, _, lock_start, lock_length, _ = _FLOCK.unpack(answer)
        if lock_type == fcntl.F_UNLCK:
            return None
        last = end if lock_length == 0 else min(end, lock_start + lock_length)  # length 0: to the end of the file
        return max(start, lock_start), last

    def close(self) -> None:
        """Give back every slot this instance holds, as a worker's death does."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._held.clear()

    def _fd(self, key: str | None) -> int:
        """The descriptor of a pool's file, opened once: its locks live as long as it does."""
        fd = self._fds.get(key)
        if fd is None:
            # Key names are letters, digits, '_', '.' and '-' (application.access), so the name is a plain file name.
            name = SESSIONS_FILE if key is None else f"key-{key}.slots"
            fd = os.open(self._directory / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._fds[key] = fd
        return fd
