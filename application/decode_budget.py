"""The process-wide bound on the bytes decoded frames hold while their pipelines run."""

from __future__ import annotations

import threading

from application.errors import DecodeBudgetExhausted
from domain import ErrorCode, FrameValidationError


class DecodedBytesBudget:
    """Bounds the bytes that decoded frames hold across every worker thread at once.

    A run charges what its decode holds (ImageDecoder.memory_needed) before
    decoding and gives it back when the run ends. A charge that does not fit
    waits, in the worker thread, for runs to finish, for at most `wait_s` (the
    frame timeout: by then the client has its answer); a charge larger than the
    whole budget can never fit and is refused at once as frame_too_large. The
    settings refuse a budget smaller than one largest frame, so with the shipped
    decoder only a frame whose MCU padding takes it past a budget set near that
    minimum meets that refusal.
    """

    def __init__(self, capacity_bytes: int, wait_s: float) -> None:
        if capacity_bytes < 1:
            raise ValueError(f"capacity_bytes must be at least 1, got {capacity_bytes}")
        if wait_s < 0:
            raise ValueError(f"wait_s must not be negative, got {wait_s}")
        self.capacity_bytes = capacity_bytes
        self.wait_s = wait_s
        self._in_use = 0
        self._peak = 0
        self._free = threading.Condition()

    def acquire(self, nbytes: int) -> None:
        if nbytes > self.capacity_bytes:
            raise FrameValidationError(
                ErrorCode.FRAME_TOO_LARGE,
                f"decoding this frame needs {nbytes} bytes; the server decodes at most {self.capacity_bytes} bytes at once",
            )
        with self._free:
            if not self._free.wait_for(lambda: self._in_use + nbytes <= self.capacity_bytes, timeout=self.wait_s):
                raise DecodeBudgetExhausted(nbytes, self.capacity_bytes, self.wait_s)
            self._in_use += nbytes
            self._peak = max(self._peak, self._in_use)

    def release(self, nbytes: int) -> None:
        with self._free:
            self._in_use -= nbytes
            self._free.notify_all()

    def in_use(self) -> int:
        with self._free:
            return self._in_use

    def peak(self) -> int:
        """The most bytes held at once since start-up."""
        with self._free:
            return self._peak
