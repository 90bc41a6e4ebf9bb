"""The Python client and CLI against hostile servers: never a hang, never a retry past its budget, every bad reply one clear error.

Each server here is a real websockets server on 127.0.0.1 that misbehaves on
purpose (never replies, asks for a pause of 1e9 s, closes 1013 after every
frame, sends replies that are not JSON, too deep, not UTF-8, binary, too
large, or an error detail of 3 MB). The CLI runs as a real process with a
timeout; the API runs in process under a deadline. Both must end in bounded
time with the package's own error, and the CLI with one short stderr line.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from forgesyte_stream_client import (
    AsyncStreamClient,
    ClientError,
    Frame,
    ProtocolError,
    Reconnect,
    ReplyTimeout,
    Result,
    ServerBusyError,
    Skipped,
    StreamError,
    stream,
)
from forgesyte_stream_client.session import DEFAULT_MAX_PAUSE_S, DEFAULT_REPLY_TIMEOUT_S
from tests.support.media import FACE_JPEG

Behaviour = Callable[[ServerConnection], Awaitable[None]]
JPEG = FACE_JPEG.read_bytes()
SLOW_DOWN = {"warning": "slow_down", "drop_rate": 0.0, "suggested_fps": 1e-9, "processing_ms": 5.0, "interval_ms": 5.0}


class HostileServer:
    """A websockets server on 127.0.0.1 running `behaviour` on every connection, counting the connections."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.connections = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        await self.behaviour(ws)

    async def _main(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._handler, "127.0.0.1", 0, compression=None, max_size=2**22) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        assert self._ready.wait(10), "the hostile server did not start"
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)


async def never_replies(ws: ServerConnection) -> None:
    async for _ in ws:
        pass  # reads every frame (pings are answered too) and answers none


async def slows_down_to_nothing(ws: ServerConnection) -> None:
    index = 0
    async for _ in ws:
        await ws.send(json.dumps(SLOW_DOWN))  # valid under the contract: any suggested_fps above 0
        await ws.send(json.dumps({"frame_index": index, "result": {}}))
        index += 1


async def busy_after_every_frame(ws: ServerConnection) -> None:
    await ws.recv()
    await ws.send(json.dumps({"frame_index": 0, "result": {}}))
    await ws.close(1013, "busy")


def busy_after_holding(seconds: float) -> Behaviour:
    async def behaviour(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(json.dumps({"frame_index": 0, "result": {}}))
        await asyncio.sleep(seconds)
        await ws.close(1013, "busy")

    return behaviour


def answers_first_frame_with(payload: str | bytes, *, text: bool | None = None, close: int | None = None) -> Behaviour:
    """Send `payload` for the first frame, then keep the connection open (or close with `close`): the client must act on the reply itself."""

    async def behaviour(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(payload, text=text)
        if close is not None:
            await ws.close(close)
            return
        async for _ in ws:
            pass

    return behaviour


NESTED = "[" * 100_000 + "]" * 100_000  # 200 kB
DEEP_BUT_READABLE = json.dumps({"frame_index": 0, "result": {"x": json.loads("[" * 500 + "]" * 500)}})
HUGE_DETAIL = json.dumps({"error": "internal_error", "detail": "\x1b[31m" + "A" * 3_000_000 + "\nforged line"})
BAD_REPLIES = {
    "nested": (answers_first_frame_with(NESTED), "nested too deeply"),
    "deep": (answers_first_frame_with(DEEP_BUT_READABLE), "more than 64 levels deep"),
    "invalid_json": (answers_first_frame_with('{"frame_index": 0, "result": '), "not JSON"),
    "nan": (answers_first_frame_with('{"frame_index": 0, "result": {"score": NaN}}'), "NaN is not a JSON number"),
    "not_utf8": (answers_first_frame_with(b'{"frame_index": 0, "result": {"x": "\xff\xfe"}}', text=True), "not UTF-8"),
    "binary": (answers_first_frame_with(b'{"frame_index": 0, "result": {}}'), "binary message"),
    "too_large": (answers_first_frame_with(json.dumps({"frame_index": 0, "result": {"blob": "B" * 5_000_000}})), "over the client's limit"),
    "huge_detail": (answers_first_frame_with(HUGE_DETAIL, close=1011), "(3000017 chars)"),
}


def frames(count: int) -> list[Frame]:
    return [Frame(index=i, jpeg=JPEG) for i in range(count)]


def camera(count: int, every_s: float = 0.05) -> Iterator[Frame]:
    """A live source: a frame every `every_s` (read in the client's own thread)."""
    for i in range(count):
        time.sleep(every_s)
        yield Frame(index=i, jpeg=JPEG)


def source(count: int, live: bool) -> Iterator[Frame] | list[Frame]:
    return camera(count) if live else frames(count)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Ten JPEGs, sent by the CLI as they are."""
    path = tmp_path / "frames"
    path.mkdir()
    for i in range(10):
        (path / f"{i:03d}.jpg").write_bytes(JPEG)
    return path


def cli(*args: str, timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "forgesyte_stream_client.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "FORGESYTE_STREAM_API_KEY": ""},
        check=False,
    )
    return done, time.monotonic() - started


def assert_one_error_line(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1, [line[:200] for line in lines[:5]]
    (line,) = lines
    assert line.startswith("forgesyte-stream-client: error: ") and len(line) <= 450, (len(line), line[:600])
    for text in expected:
        assert text in line, line
    return line


def collect(coroutine_factory: Callable[[], Awaitable[None]], limit_s: float) -> float:
    """Run the coroutine under a hard deadline (a hang fails the test instead of hanging it); the seconds it took."""

    async def bounded() -> None:
        async with asyncio.timeout(limit_s):
            await coroutine_factory()

    started = time.monotonic()
    asyncio.run(bounded())
    return time.monotonic() - started


# A server that never replies ---------------------------------------------------------------------


def test_cli_against_a_server_that_never_replies_ends_at_the_reply_timeout(folder: Path) -> None:
    with HostileServer(never_replies) as server:
        done, took = cli("stream", str(folder), "--url", server.url, "--pipeline", "p", "--quiet", "--reply-timeout", "1", timeout=30)
    assert_one_error_line(done, "reply_timeout", "answered no frame for 1 s")
    assert took < 10, took


def test_the_reply_timeout_is_on_by_default() -> None:
    from forgesyte_stream_client.cli import build_parser

    args = build_parser().parse_args(["stream", "x", "--url", "ws://127.0.0.1:1", "--pipeline", "p"])
    assert args.reply_timeout == DEFAULT_REPLY_TIMEOUT_S == 30.0 and args.max_pause == DEFAULT_MAX_PAUSE_S == 10.0
    assert AsyncStreamClient("ws://127.0.0.1:1", "p").reply_timeout == 30.0


@pytest.mark.parametrize("live", [False, True], ids=["window", "live"])
def test_stream_against_a_server_that_never_replies_answers_every_sent_frame_with_reply_timeout(live: bool) -> None:
    outcomes = []

    async def main() -> None:
        with pytest.raises(ReplyTimeout) as raised:
            async for outcome in stream(server.url, "p", source(40, live), live=live, reply_timeout=0.5):
                outcomes.append(outcome)
        assert raised.value.code == "reply_timeout" and not raised.value.retryable

    with HostileServer(never_replies) as server:
        took = collect(main, 15)
    sent = [o for o in outcomes if not isinstance(o.reply, Skipped)]
    assert sent and all(isinstance(o.reply, ReplyTimeout) for o in sent)
    assert 0.5 <= took < 5, took
    assert server.connections == 1


def test_a_fixed_rate_stream_to_a_server_that_reads_nothing_ends_at_the_reply_timeout() -> None:
    """The sender blocked on a full socket is bounded too, not only the wait for a reply."""

    async def reads_nothing(ws: ServerConnection) -> None:
        await ws.wait_closed()  # its handler never calls recv(): the server's queue fills, then the socket

    big = Frame(index=0, jpeg=JPEG + b"\0" * 500_000)  # fills the socket's buffers in a few frames

    async def main() -> None:
        from forgesyte_stream_client import Pacing

        with pytest.raises(ReplyTimeout):
            async for _ in stream(server.url, "p", [Frame(index=i, jpeg=big.jpeg) for i in range(400)], pacing=Pacing.fixed(200.0), reply_timeout=1.0):
                pass

    with HostileServer(reads_nothing) as server:
        took = collect(main, 20)
    assert took < 8, took


def test_the_low_level_client_receive_is_bounded_by_its_reply_timeout() -> None:
    async def main() -> None:
        async with AsyncStreamClient(server.url, "p", reply_timeout=0.5) as client:
            await client.send(JPEG)
            started = time.monotonic()
            with pytest.raises(ReplyTimeout):
                await client.receive()
            assert 0.4 < time.monotonic() - started < 3
            with pytest.raises(ReplyTimeout):  # the session is over: it says so again, without waiting
                await client.receive()

    with HostileServer(never_replies) as server:
        collect(main, 15)


# A slow_down that asks for a pause of 1e9 s --------------------------------------------------------


def test_cli_caps_the_pause_a_slow_down_asks_for(folder: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "out.jsonl"
    with HostileServer(slows_down_to_nothing) as server:
        done, took = cli("stream", str(folder), "--url", server.url, "--pipeline", "p", "--quiet", "--max-pause", "0.3", "--jsonl", str(jsonl), timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len([r for r in records if "frame_index" in r]) == 10 and any("warning" in r for r in records)
    # Ten frames, a window of two: eight sends wait out the capped pause, and none waits longer.
    assert 8 * 0.3 * 0.9 <= took < 20, took


@pytest.mark.parametrize("live", [False, True], ids=["window", "live"])
def test_stream_caps_the_pause_a_slow_down_asks_for(live: bool) -> None:
    outcomes = []

    async def main() -> None:
        async for outcome in stream(server.url, "p", source(6, live), live=live, max_pause_s=0.2):
            outcomes.append(outcome)

    with HostileServer(slows_down_to_nothing) as server:
        took = collect(main, 20)
    answered = [o.index for o in outcomes if isinstance(o.reply, Result)]
    assert [o.index for o in outcomes] == list(range(6)) and len(answered) >= 2
    # The pause is kept (at most one send per 0.2 s after the first slow_down), and it is no longer than that.
    assert 0.2 * (len(answered) - 2) * 0.9 <= took < 6, (took, answered)


# A server that closes 1013 after every frame --------------------------------------------------------


def test_cli_reconnect_attempts_bound_the_connections_of_a_run(folder: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "out.jsonl"
    with HostileServer(busy_after_every_frame) as server:
        done, took = cli("stream", str(folder), "--url", server.url, "--pipeline", "p", "--quiet", "--reconnect-attempts", "2",
                         "--jsonl", str(jsonl), timeout=60)
        connections = server.connections
    assert connections == 3, connections
    assert_one_error_line(done, "server_busy", "close 1013")
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len([r for r in records if "reconnect" in r]) == 2
    assert took < 15, took


@pytest.mark.parametrize("live", [False, True], ids=["window", "live"])
@pytest.mark.parametrize("attempts", [0, 1, 3])
def test_stream_makes_at_most_one_plus_attempts_connections(attempts: int, live: bool) -> None:
    outcomes = []

    async def main() -> None:
        policy = Reconnect(attempts=attempts, initial_delay_s=0.02, max_delay_s=0.05)
        with pytest.raises(ServerBusyError):
            async for outcome in stream(server.url, "p", source(40, live), live=live, reconnect=policy):
                outcomes.append(outcome)

    with HostileServer(busy_after_every_frame) as server:
        collect(main, 20)
        assert server.connections == 1 + attempts
    assert len([o for o in outcomes if isinstance(o.reply, Result)]) == 1 + attempts


def test_a_connection_that_stayed_open_reset_after_s_gives_the_budget_back() -> None:
    """Each connection lasts 0.4 s: with reset_after_s 0.3 every one refills the budget, with None the budget is spent for good."""
    outcomes = []

    async def run(policy: Reconnect) -> None:
        async for outcome in stream(server.url, "p", frames(4), reconnect=policy):
            outcomes.append(outcome)

    with HostileServer(busy_after_holding(0.4)) as server:
        collect(lambda: run(Reconnect(attempts=1, initial_delay_s=0.02, reset_after_s=0.3)), 30)
        assert [o.index for o in outcomes if isinstance(o.reply, Result)] == [0, 1, 2, 3]
        assert server.connections == 4

    outcomes.clear()
    with HostileServer(busy_after_holding(0.4)) as server:

        async def spent() -> None:
            with pytest.raises(ServerBusyError):
                await run(Reconnect(attempts=1, initial_delay_s=0.02, reset_after_s=None))

        collect(spent, 30)
        assert server.connections == 2


# Bad replies ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BAD_REPLIES))
def test_cli_turns_every_bad_reply_into_one_short_line(kind: str, folder: Path) -> None:
    behaviour, expected = BAD_REPLIES[kind]
    with HostileServer(behaviour) as server:
        done, took = cli("stream", str(folder), "--url", server.url, "--pipeline", "p", "--quiet", timeout=60)
    assert_one_error_line(done, expected)
    assert took < 20, took


@pytest.mark.parametrize("kind", list(BAD_REPLIES))
def test_stream_turns_every_bad_reply_into_the_packages_error(kind: str) -> None:
    behaviour, expected = BAD_REPLIES[kind]
    outcomes = []
    raised: list[BaseException] = []

    async def main() -> None:
        try:
            async for outcome in stream(server.url, "p", frames(3)):
                outcomes.append(outcome)
        except ClientError as error:
            raised.append(error)

    with HostileServer(behaviour) as server:
        collect(main, 20)
    (error,) = raised
    assert isinstance(error, StreamError) and not error.retryable
    assert expected in str(error) and "\n" not in str(error) and len(str(error)) < 400, str(error)[:500]
    if kind == "huge_detail":
        assert error.code == "internal_error" and error.close_code == 1011 and len(error.detail) == 3_000_017  # kept whole for the caller
    else:
        assert isinstance(error, ProtocolError) and error.code == "protocol_error"
    # Every frame sent before the bad reply is answered with that error.
    assert outcomes and all(o.reply is error for o in outcomes), [type(o.reply) for o in outcomes]


def test_an_error_text_is_one_printable_line_however_long_the_servers_detail() -> None:
    error = StreamError("internal_error", "\x1b[2J" + "x" * 10_000 + "\nforged: line")
    text = str(error)
    assert "\n" not in text and "\x1b" not in text and "\\x1b[2J" in text
    assert text.endswith("… (10017 chars)") and len(text) < 300
    assert len(error.detail) == 10_017
    assert str(StreamError("x" * 5000, "short")).count("x") == 60
