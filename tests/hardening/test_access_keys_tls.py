"""Access control against the real server: API keys, the per-key quota, TLS, and --workers balance.

Each attack is performed over a real socket on a server started in a
subprocess (tests/support/server.py); the key-file parser has a few direct
cases at the top, for the rules the attacks do not reach. The Host and Origin
checks are in test_access_origin.py.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed as WebsocketsClosed
from websockets.exceptions import InvalidStatus

from application.access import AccessPolicy, KeyFileError, parse_api_keys
from tests.observability.support import records, wait_for_records
from contracts.client import StreamClient
from tests.support.server import ROOT, RunningServer, start_server
from tests.hardening.access_support import ALICE_KEY, BOB_KEY, FRAME, WRONG_KEY, access_records, metrics, run


# The pure policy ----------------------------------------------------------------


def test_key_file_lines_named_plain_and_hashed() -> None:
    text = f"# comment\n\nalice {ALICE_KEY}\nsha256:{hashlib.sha256(BOB_KEY.encode()).hexdigest()}\n"
    keys = parse_api_keys(text)
    assert [k.name for k in keys] == ["alice", "line-4"]
    policy = AccessPolicy(keys=keys, allowed_hosts=None, allowed_origins=None)
    assert policy.authenticate(f"Bearer {ALICE_KEY}").key_name == "alice"
    assert policy.authenticate(None, [f"forgesyte.bearer.{BOB_KEY}"]).key_name == "line-4"
    assert policy.authenticate(f"Bearer {WRONG_KEY}").label == "unknown"
    assert policy.authenticate(None).label == "missing"
    assert policy.authenticate(f"Basic {ALICE_KEY}").authorized is False


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("short", "at least 16"),
        (f"a b {ALICE_KEY}", "3 fields"),
        ("x sha256:abc", "64 hexadecimal"),
        (f"a {ALICE_KEY}\na {BOB_KEY}", "used twice"),
        (f"a {ALICE_KEY}\nb {ALICE_KEY}", "listed twice"),
        ("# nothing\n", "no key"),
    ],
)
def test_a_malformed_key_file_names_the_line_never_the_key(text: str, fragment: str) -> None:
    with pytest.raises(KeyFileError, match=fragment) as raised:
        parse_api_keys(text)
    assert ALICE_KEY not in str(raised.value) and BOB_KEY not in str(raised.value)


# API keys -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"alice {ALICE_KEY}\nbob sha256:{hashlib.sha256(BOB_KEY.encode()).hexdigest()}\n", encoding="utf-8")
    running = start_server(
        {
            # debug: the WebSocket libraries then log every handshake header, keys included unless redacted.
            "FORGESYTE_STREAM_LOG_LEVEL": "debug",
            "FORGESYTE_STREAM_API_KEYS_FILE": str(keys),
            "FORGESYTE_STREAM_MAX_SESSIONS": "2",
            "FORGESYTE_STREAM_MAX_SESSIONS_PER_KEY": "1",
        }
    )
    yield running
    running.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_http_without_a_valid_key_is_401_and_health_stays_open(keyed_server: RunningServer) -> None:
    base = keyed_server.http
    for path in ("/v1/pipelines", "/v1/pipelines/probe", "/metrics", "/schema/openapi.json"):
        for headers in ({}, bearer(WRONG_KEY), {"Authorization": f"Basic {ALICE_KEY}"}):
            response = httpx.get(base + path, headers=headers, timeout=5, trust_env=False)
            assert response.status_code == 401, (path, response.text)
            assert response.json()["error"] == "unauthorized" and response.json()["detail"]
            assert response.headers["www-authenticate"].startswith("Bearer")
    response = httpx.post(base + "/v1/pipelines/probe/frames", content=FRAME, headers={"content-type": "image/jpeg"}, trust_env=False)
    assert response.status_code == 401
    assert httpx.get(base + "/health", timeout=5, trust_env=False).status_code == 200
    for key in (ALICE_KEY, BOB_KEY):
        assert httpx.get(base + "/v1/pipelines", headers=bearer(key), timeout=5, trust_env=False).status_code == 200
    response = httpx.post(
        base + "/v1/pipelines/probe/frames", content=FRAME, headers={"content-type": "image/jpeg", **bearer(BOB_KEY)}, trust_env=False
    )
    assert response.status_code == 200 and response.json()["result"]["width"] == 64
    document = httpx.get(base + "/schema/openapi.json", headers=bearer(ALICE_KEY), timeout=5, trust_env=False).json()
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": document["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert document["paths"]["/v1/pipelines"]["get"]["security"] == [{"bearerAuth": []}]
    assert "401" in document["paths"]["/v1/pipelines/{pipeline_id}/frames"]["post"]["responses"]
    assert "security" not in document["paths"]["/health"]["get"]
    logs = keyed_server.log_text()
    assert ALICE_KEY not in logs and BOB_KEY not in logs and WRONG_KEY not in logs


async def _refused_stream(server: RunningServer, **options: Any) -> tuple[list[dict[str, Any]], int | None]:
    async with connect(server.ws("probe"), proxy=None, open_timeout=10, **options) as connection:
        messages = []
        try:
            async for raw in connection:
                messages.append(json.loads(raw))
        except WebsocketsClosed:
            pass  # an abnormal close still leaves its code
        return messages, connection.close_code


def test_unauthorized_streams_get_close_3000_and_never_take_a_slot(keyed_server: RunningServer) -> None:
    async def scenario() -> tuple[list[Any], dict[str, Any], str | None]:
        # 30 refused attempts at once against a server with 2 slots, then a keyed client gets in.
        attempts = [_refused_stream(keyed_server) for _ in range(10)]
        attempts += [_refused_stream(keyed_server, additional_headers=bearer(WRONG_KEY)) for _ in range(10)]
        attempts += [_refused_stream(keyed_server, subprotocols=[f"forgesyte.bearer.{WRONG_KEY}"]) for _ in range(10)]
        refused = await asyncio.gather(*attempts)
        client = await StreamClient.connect(keyed_server.ws("probe"))  # no key: one more, read through the contract checker
        await client.recv_until_closed()
        async with connect(keyed_server.ws("probe"), proxy=None, additional_headers=bearer(ALICE_KEY)) as connection:
            await connection.send(FRAME)
            reply = json.loads(await asyncio.wait_for(connection.recv(), 10))
        return refused + [(client.received.messages, client.received.close_code)], reply, None

    refused, reply, _ = run(scenario())
    for messages, close_code in refused:
        assert close_code == 3000
        assert [m["error"] for m in messages] == ["unauthorized"]
    assert reply["frame_index"] == 0 and "result" in reply
    assert keyed_server.wait_for(lambda h: h["sessions_active"] == 0)["sessions_active"] == 0
    scrape = metrics(keyed_server, ALICE_KEY)
    assert scrape.value("stream_sessions_rejected_total", reason="unauthorized") >= 31
    assert scrape.total("stream_sessions_rejected_total", reason="server_busy") == 0
    refusals = [r for r in access_records(keyed_server) if r["channel"] == "websocket" and r["reason"] == "unauthorized"]
    assert {r["key"] for r in refusals} == {"missing", "unknown"}
    assert all(r["level"] == "warning" for r in refusals)
    assert WRONG_KEY not in keyed_server.log_text()
    opened = [r for r in records(keyed_server) if r.get("event") == "session_connected"]
    assert opened and opened[-1]["api_key"] == "alice"


def test_the_bearer_subprotocol_is_echoed_and_authorizes(keyed_server: RunningServer) -> None:
    async def scenario() -> tuple[str | None, dict[str, Any]]:
        protocol = f"forgesyte.bearer.{BOB_KEY}"
        async with connect(keyed_server.ws("probe"), proxy=None, subprotocols=["forgesyte.v1", protocol]) as connection:  # type: ignore[list-item]
            await connection.send(FRAME)
            return connection.subprotocol, json.loads(await asyncio.wait_for(connection.recv(), 10))

    subprotocol, reply = run(scenario())
    assert subprotocol == f"forgesyte.bearer.{BOB_KEY}"
    assert "result" in reply
    logs = keyed_server.log_text()
    assert "forgesyte.bearer.<redacted>" in logs, "the handshake headers are logged at debug, redacted"
    assert BOB_KEY not in logs


def test_the_per_key_quota_answers_server_busy_and_frees_with_the_session(keyed_server: RunningServer) -> None:
    async def scenario() -> tuple[tuple[list[Any], int | None], dict[str, Any], dict[str, Any]]:
        async with connect(keyed_server.ws("probe"), proxy=None, additional_headers=bearer(ALICE_KEY)) as first:
            await first.send(FRAME)
            await asyncio.wait_for(first.recv(), 10)
            over = await _refused_stream(keyed_server, additional_headers=bearer(ALICE_KEY))
            async with connect(keyed_server.ws("probe"), proxy=None, additional_headers=bearer(BOB_KEY)) as other:
                await other.send(FRAME)
                other_reply = json.loads(await asyncio.wait_for(other.recv(), 10))
        keyed_server.wait_for(lambda h: h["sessions_active"] == 0)
        async with connect(keyed_server.ws("probe"), proxy=None, additional_headers=bearer(ALICE_KEY)) as again:
            await again.send(FRAME)
            again_reply = json.loads(await asyncio.wait_for(again.recv(), 10))
        return over, other_reply, again_reply

    (messages, close_code), other_reply, again_reply = run(scenario())
    assert close_code == 1013
    assert [m["error"] for m in messages] == ["server_busy"] and "API key" in messages[0]["detail"]
    assert "result" in other_reply and "result" in again_reply
    assert metrics(keyed_server, ALICE_KEY).value("stream_sessions_rejected_total", reason="key_quota") == 1
    (quota,) = [r for r in access_records(keyed_server) if r["reason"] == "key_quota"]
    assert quota["key"] == "alice"


def test_a_bad_key_file_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("tooshort\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "adapters.entrypoints.cli", "serve", "--port", "1"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "FORGESYTE_STREAM_API_KEYS_FILE": str(keys)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "FORGESYTE_STREAM_API_KEYS_FILE" in result.stderr and "line 1" in result.stderr
    assert "tooshort" not in result.stderr


# TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    return ca, cert_path, key_path


def test_tls_serves_https_and_wss(certificates: tuple[trustme.CA, Path, Path]) -> None:
    ca, cert_path, key_path = certificates
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    server = start_server({"FORGESYTE_STREAM_TLS_CERT_FILE": str(cert_path), "FORGESYTE_STREAM_TLS_KEY_FILE": str(key_path)}, tls=client_context)
    try:
        assert server.http.startswith("https://")
        response = httpx.get(f"{server.http}/v1/pipelines", verify=client_context, trust_env=False, timeout=5)
        assert response.status_code == 200

        async def stream() -> dict[str, Any]:
            async with connect(server.ws("probe"), ssl=client_context, proxy=None, origin=f"https://127.0.0.1:{server.port}") as connection:  # type: ignore[arg-type]
                await connection.send(FRAME)
                return json.loads(await asyncio.wait_for(connection.recv(), 10))

        assert "result" in run(stream())
        # The server's own origin is https now: an http origin on the same host and port is another origin.
        with pytest.raises(InvalidStatus) as refused:
            run(connect(server.ws("probe"), ssl=client_context, proxy=None, origin=f"http://evil.example:{server.port}").__aenter__())  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA is refused by TLS itself
            httpx.get(f"{server.http}/health", trust_env=False, timeout=5)
        with pytest.raises(httpx.RemoteProtocolError):  # plain http on the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{server.port}/health", trust_env=False, timeout=5)
    finally:
        server.stop()


@pytest.mark.parametrize(
    "which, variable",
    [
        ("cert-only", "FORGESYTE_STREAM_TLS_KEY_FILE"),
        ("bad-cert", "FORGESYTE_STREAM_TLS_CERT_FILE"),
        ("bad-key", "FORGESYTE_STREAM_TLS_KEY_FILE"),
        ("mismatch", "FORGESYTE_STREAM_TLS_KEY_FILE"),
    ],
)
def test_bad_tls_files_stop_start_up_naming_the_variable(
    which: str, variable: str, certificates: tuple[trustme.CA, Path, Path], tmp_path: Path
) -> None:
    ca, cert_path, key_path = certificates
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a pem file\n", encoding="utf-8")
    other_key = tmp_path / "other-key.pem"
    ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other_key))
    env = {
        "cert-only": {"FORGESYTE_STREAM_TLS_CERT_FILE": str(cert_path)},
        "bad-cert": {"FORGESYTE_STREAM_TLS_CERT_FILE": str(garbage), "FORGESYTE_STREAM_TLS_KEY_FILE": str(key_path)},
        "bad-key": {"FORGESYTE_STREAM_TLS_CERT_FILE": str(cert_path), "FORGESYTE_STREAM_TLS_KEY_FILE": str(garbage)},
        "mismatch": {"FORGESYTE_STREAM_TLS_CERT_FILE": str(cert_path), "FORGESYTE_STREAM_TLS_KEY_FILE": str(other_key)},
    }[which]
    result = subprocess.run(
        [sys.executable, "-m", "adapters.entrypoints.cli", "serve", "--port", "1"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert variable in result.stderr


def test_the_websockets_adapter_serves_wss_behind_the_same_keys(certificates: tuple[trustme.CA, Path, Path], tmp_path: Path) -> None:
    """The alternate transport applies the same policy module: TLS, the key, the subprotocol echo, the Origin check."""
    from contracts.targets import free_port, server_environment, wait_until_listening

    ca, cert_path, key_path = certificates
    keys = tmp_path / "keys.txt"
    keys.write_text(f"alice {ALICE_KEY}\n", encoding="utf-8")
    port = free_port()
    env = server_environment(
        FORGESYTE_STREAM_TLS_CERT_FILE=str(cert_path),
        FORGESYTE_STREAM_TLS_KEY_FILE=str(key_path),
        FORGESYTE_STREAM_API_KEYS_FILE=str(keys),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "adapters.entrypoints.cli", "serve", "--transport", "websockets", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    url = f"wss://127.0.0.1:{port}/ws/video/stream?pipeline_id=probe"
    try:
        assert wait_until_listening("127.0.0.1", port, 60, alive=lambda: process.poll() is None)

        async def scenario() -> tuple[str | None, dict[str, Any], tuple[list[Any], int | None], int]:
            async with connect(url, ssl=context, proxy=None, subprotocols=[f"forgesyte.bearer.{ALICE_KEY}"]) as connection:  # type: ignore[list-item]
                await connection.send(FRAME)
                reply = json.loads(await asyncio.wait_for(connection.recv(), 10))
                subprotocol = connection.subprotocol
            async with connect(url, ssl=context, proxy=None) as refused:
                messages = []
                try:
                    async for raw in refused:
                        messages.append(json.loads(raw))
                except Exception:
                    pass
                unauthorized = (messages, refused.close_code)
            with pytest.raises(InvalidStatus) as foreign:
                async with connect(url, ssl=context, proxy=None, origin="https://evil.example"):  # type: ignore[arg-type]
                    pass
            return subprotocol, reply, unauthorized, foreign.value.response.status_code

        subprotocol, reply, (messages, close_code), foreign_status = run(scenario())
        assert subprotocol == f"forgesyte.bearer.{ALICE_KEY}" and "result" in reply
        assert [m["error"] for m in messages] == ["unauthorized"] and close_code == 3000
        assert foreign_status == 403
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode(errors="replace")
    assert ALICE_KEY not in output


# --workers balance --------------------------------------------------------------


def test_forty_simultaneous_sessions_spread_over_two_workers_without_server_busy() -> None:
    # MAX_SESSIONS counts the whole server, so 40 fit only while neither worker's share matters.
    server = start_server({"FORGESYTE_STREAM_LOG_LEVEL": "info", "FORGESYTE_STREAM_MAX_SESSIONS": "40"}, extra_args=["--workers", "2"])
    try:
        (started,) = wait_for_records(server, lambda r: r["event"] == "workers_started")
        # /health answered means one worker is up; the other must be listening too before the burst.
        wait_for_records(server, lambda r: r["event"] == "Application startup complete.", count=2, timeout=60)

        async def scenario() -> list[dict[str, Any]]:
            connections = await asyncio.gather(
                *(connect(server.ws("probe"), proxy=None, open_timeout=20) for _ in range(40))  # type: ignore[arg-type]
            )
            try:
                await asyncio.gather(*(c.send(FRAME) for c in connections))
                return [json.loads(await asyncio.wait_for(c.recv(), 20)) for c in connections]
            finally:
                await asyncio.gather(*(c.close() for c in connections))

        replies = run(scenario())
        assert all("result" in reply for reply in replies), [r for r in replies if "result" not in r][:3]
        split = collections.Counter(r["pid"] for r in records(server) if r.get("event") == "session_connected")
        assert sorted(split) == sorted(started["pids"]), split
        assert sum(split.values()) == 40
        # Hashing 40 connections over 2 sockets: fewer than 8 on one worker has a probability of about 2e-5.
        assert min(split.values()) >= 8, split
        print(f"\n40 simultaneous sessions over 2 workers: {sorted(split.values())}")
    finally:
        server.stop()
