"""Reading a real server's /metrics and stdout, for the observability tests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from contracts.client import Received, StreamClient
from tests.support.media import jpeg
from tests.support.server import RunningServer

FRAME = jpeg()
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
PER_FRAME_EVENTS = frozenset({"frame_received", "frame_dropped", "frame_processed", "error_sent"})


@dataclass(frozen=True)
class Scrape:
    """One /metrics exposition, parsed with prometheus-client's own parser."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return cls(samples)

    def value(self, name: str, **labels: str) -> float:
        """The one sample with exactly these labels; KeyError when the series does not exist."""
        return self.samples[(name, frozenset(labels.items()))]

    def total(self, name: str, **labels: str) -> float:
        """The sum over every series of `name` whose labels include these."""
        wanted = set(labels.items())
        return sum(value for (sample, sample_labels), value in self.samples.items() if sample == name and wanted <= sample_labels)

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(labels)[label] for (sample, labels) in self.samples if sample == name and label in dict(labels)}


def scrape(server: RunningServer, accept: str | None = None) -> Scrape:
    headers = {"accept": accept} if accept else {}
    response = httpx.get(f"{server.http}/metrics", headers=headers, timeout=5, trust_env=False)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == TEXT_FORMAT
    return Scrape.parse(response.text)


def settled(server: RunningServer, sessions: int = 0, timeout: float = 10.0) -> Scrape:
    """Scrape once the sessions gauge reads `sessions`.

    A session reports its close last, after every other event of it, so once
    the gauge is back the counters hold everything the closed sessions did.
    """
    deadline = time.monotonic() + timeout
    last = scrape(server)
    while last.total("stream_sessions_active") != sessions and time.monotonic() < deadline:
        time.sleep(0.05)
        last = scrape(server)
    assert last.total("stream_sessions_active") == sessions, f"stream_sessions_active stayed at {last.total('stream_sessions_active')}"
    return last


def delta(after: Scrape, before: Scrape, name: str, **labels: str) -> float:
    return after.total(name, **labels) - before.total(name, **labels)


def records(server: RunningServer) -> list[dict[str, Any]]:
    """Every stdout line so far, each of which must be one JSON object."""
    parsed = []
    for line in list(server.lines):
        record = json.loads(line)
        assert isinstance(record, dict), line
        parsed.append(record)
    return parsed


def wait_for_records(
    server: RunningServer, predicate: Callable[[dict[str, Any]], bool], count: int = 1, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The log records matching `predicate`, once at least `count` of them have been read from stdout."""
    deadline = time.monotonic() + timeout
    matching = [r for r in records(server) if predicate(r)]
    while len(matching) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        matching = [r for r in records(server) if predicate(r)]
    assert len(matching) >= count, f"{len(matching)} of {count} log records seen"
    return matching


def client_address(client: StreamClient) -> str:
    host, port = client.connection.local_address[:2]
    return f"{host}:{port}"


def session_of(server: RunningServer, client: str) -> str:
    """The session_id the server logged for this client address."""
    (connected,) = wait_for_records(server, lambda r: r["event"] == "session_connected" and r.get("client") == client)
    return str(connected["session_id"])


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def stream_in_lockstep(server: RunningServer, pipeline_id: str, frames: int) -> tuple[Received, str]:
    """Send each frame once the previous one was answered, so nothing is dropped; return what came and the client address."""
    client = await StreamClient.connect(server.ws(pipeline_id))
    for _ in range(frames):
        await client.send_raw(FRAME)
        await client.recv()
    address = client_address(client)
    await client.close()
    return client.received, address


async def overload(server: RunningServer, pipeline_id: str, frames: int, interval_s: float) -> tuple[Received, str]:
    """Send on an absolute schedule faster than the pipeline, read every reply, then close."""
    client = await StreamClient.connect(server.ws(pipeline_id))
    receiver = asyncio.create_task(client.recv_replies(set(range(frames)), timeout=60))
    await client.send_paced(FRAME, frames, interval_s)
    received = await receiver
    address = client_address(client)
    await client.close()
    return received, address
