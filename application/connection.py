"""What the transport knows about a connection that the stream's observers report: a context variable.

The StreamObserver port's events carry the session and the client's address;
the transport that accepted the connection also knows which transport it is,
which API key name it presented and the trace context its handshake carried.
Those facts are set here around `StreamAccess.serve`, so the observers read
them in `session_opened` without every event, and every transport, growing
parameters that only two observers use.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple


class ConnectionFacts(NamedTuple):
    """`key_name` is the matched key's name (missing / unknown / anonymous), never the key itself.

    `traceparent` and `tracestate` are the W3C trace context headers of the
    handshake, as sent (None when absent); the tracing adapter parses them.
    """

    transport: str
    key_name: str
    traceparent: str | None = None
    tracestate: str | None = None


_CURRENT: ContextVar[ConnectionFacts | None] = ContextVar("forgesyte_connection", default=None)


def current_connection() -> ConnectionFacts | None:
    return _CURRENT.get()


@contextmanager
def connection_facts(facts: ConnectionFacts) -> Iterator[ConnectionFacts]:
    """Make `facts` the current connection's for the block (the task serving it and the tasks it starts)."""
    token = _CURRENT.set(facts)
    try:
        yield facts
    finally:
        _CURRENT.reset(token)
