"""How `stream()` paces its frames and how often it reconnects: the policies, and each run's budget of them."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from forgesyte_stream_client.errors import BUSY_CLOSE, RESTART_CLOSE, ClientError, ReplyTimeout, StreamError
from forgesyte_stream_client.session import AsyncStreamClient
from forgesyte_stream_client.sources import Source


@dataclass(frozen=True)
class Pacing:
    """How fast `stream()` sends.

    window: at most `window` frames unanswered (files: every frame, as fast
    as the server keeps up, none dropped). live: the newest frame whenever
    fewer than `window` are unanswered, no faster than the server's
    `suggested_fps`. fixed: `fps` frames per second whatever the server says.
    """

    mode: Literal["window", "live", "fixed"] = "window"
    window: int = 2
    fps: float | None = None

    @classmethod
    def for_source(cls, source: Source) -> Pacing:
        return cls("live", 1) if source.live else cls("window", 2)

    @classmethod
    def fixed(cls, fps: float) -> Pacing:
        if not fps > 0:
            raise ValueError(f"fps must be above 0, got {fps}")
        return cls("fixed", 0, fps)


@dataclass(frozen=True)
class Reconnect:
    """Reconnect with exponential backoff and jitter when the server restarts (1012) or is busy (1013).

    `attempts` is the budget of a whole run: at most that many connection
    attempts after the first one (refused attempts while a server restarts
    count too), so a run opens at most 1 + attempts connections. The budget
    is refilled only by a connection that stayed open for `reset_after_s`
    seconds (None: never), so that a stream that runs for days rides out
    each restart, while a server that closes after every frame is not
    reconnected to for ever.
    """

    close_codes: frozenset[int] = frozenset({RESTART_CLOSE, BUSY_CLOSE})
    attempts: int = 5
    initial_delay_s: float = 0.5
    max_delay_s: float = 30.0
    reset_after_s: float | None = 300.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.initial_delay_s * 2**attempt) * (0.5 + random.random() / 2)

    def retries(self, error: StreamError, attempt: int) -> bool:
        """Whether a session that ended with `error` is followed by another, with `attempt` attempts of the budget spent."""
        return error.close_code in self.close_codes and attempt < self.attempts


class Budget:
    """The reconnects a run has spent, and the backoff before the next one."""

    def __init__(self, policy: Reconnect, on_reconnect: Callable[[ClientError, float], None] | None) -> None:
        self.policy = policy
        self.spent = 0
        self._on_reconnect = on_reconnect
        self._connected_at: float | None = None

    def connected(self) -> None:
        self._connected_at = time.monotonic()

    def _session_ended(self) -> None:
        if self._connected_at is None:
            return
        lasted = time.monotonic() - self._connected_at
        self._connected_at = None
        if self.policy.reset_after_s is not None and lasted >= self.policy.reset_after_s:
            self.spent = 0

    def retries(self, error: StreamError) -> bool:
        """Whether the session that ended with `error` is followed by another."""
        self._session_ended()
        return self.policy.retries(error, self.spent)

    def left(self) -> bool:
        return self.spent < self.policy.attempts

    async def wait(self, error: ClientError) -> None:
        """Spend one attempt: wait out its backoff, telling on_reconnect first."""
        delay = self.policy.delay(self.spent)
        self.spent += 1
        if self._on_reconnect is not None:
            self._on_reconnect(error, delay)
        await asyncio.sleep(delay)


class Deadline:
    """The reply timeout of a stream: the server must answer some frame within it while any is unanswered."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._since = time.monotonic()

    def progress(self) -> None:
        """A frame was answered, or one was sent while none waited: the wait starts again."""
        self._since = time.monotonic()

    def left(self) -> float | None:
        return None if self.timeout is None else self._since + self.timeout - time.monotonic()

    def error(self, client: AsyncStreamClient) -> ReplyTimeout:
        return client._time_out(f"the server answered no frame for {self.timeout:g} s (reply timeout)")


NO_RECONNECT = Reconnect(attempts=0)

# The reconnect policy of a run that names none: a frozen value, shared.
DEFAULT_RECONNECT = Reconnect()
