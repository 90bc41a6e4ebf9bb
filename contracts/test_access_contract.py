"""Access control as asyncapi.yaml and the OpenAPI document declare it, on every target.

Self-started targets require an API key made for the run (contracts/conftest.py),
so every other case in the suite also proves that a keyed client is served as
before; these cases check what a client without a valid key gets, the two ways
of presenting one, and the Host and Origin refusals before the upgrade.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from contracts.client import StreamClient, error_classes
from contracts.frames import jpeg
from contracts.targets import Target

T = TypeVar("T")
SUBPROTOCOL_PREFIX = "forgesyte.bearer."


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def keyed(target: Target) -> str:
    if target.api_key is None:
        pytest.skip(f"{target.name} requires no API key (pass --api-key for one that does)")
    return target.api_key


@pytest.mark.parametrize(
    "presented",
    [pytest.param({"headers": {}}, id="no-key"), pytest.param({"headers": {"Authorization": "Bearer not-the-key-0123456789"}}, id="wrong-header"),
     pytest.param({"subprotocols": [SUBPROTOCOL_PREFIX + "not-the-key-0123456789"]}, id="wrong-subprotocol")],
)
def test_without_a_valid_key_the_stream_is_unauthorized_and_closed_with_3000(target: Target, presented: dict[str, Any]) -> None:
    keyed(target)

    async def scenario() -> tuple[Any, StreamClient]:
        client = await target.open("result", **presented)
        with pytest.raises(error_classes()["unauthorized"]) as refused:
            await client.receive()  # the refusal comes first, whatever the client sends
        return refused.value, client

    error, client = run(scenario())
    assert error.close_code == 3000
    assert error.detail
    if "subprotocols" in presented:
        assert client.connection.subprotocol == presented["subprotocols"][0], "the offered bearer subprotocol is echoed"


def test_the_key_as_a_subprotocol_is_echoed_and_serves_the_stream(target: Target) -> None:
    key = keyed(target)

    async def scenario() -> tuple[str | None, Any]:
        client = await target.open("result", subprotocols=["forgesyte.other", SUBPROTOCOL_PREFIX + key])
        index = await client.send_frame(jpeg())
        reply = await client.receive()
        protocol = client.connection.subprotocol
        await client.close()
        assert index == 0
        return protocol, reply

    protocol, reply = run(scenario())
    assert protocol == SUBPROTOCOL_PREFIX + key
    assert type(reply).__name__ == "FrameResultPayload"


def test_refused_clients_take_no_session_slot(target: Target) -> None:
    keyed(target)

    async def refused_one() -> int | None:
        client = await target.open("result", headers={})
        with pytest.raises(error_classes()["unauthorized"]) as refused:
            await client.receive()
        return refused.value.close_code

    async def scenario() -> tuple[list[int | None], Any]:
        codes = await asyncio.gather(*(refused_one() for _ in range(8)))
        async with await target.open("result") as client:
            await client.send_frame(jpeg())
            return list(codes), await client.receive()

    codes, reply = run(scenario())
    assert codes == [3000] * 8
    assert type(reply).__name__ == "FrameResultPayload"


@pytest.mark.parametrize(
    "header, value, status, error",
    [
        pytest.param("Origin", "https://evil.example", 403, "forbidden_origin", id="foreign-origin"),
        pytest.param("Origin", "null", 403, "forbidden_origin", id="opaque-origin"),
        pytest.param("Host", "evil.example", 400, "invalid_host", id="rebinding-host"),
    ],
)
def test_a_handshake_from_a_foreign_page_or_host_is_refused_before_the_upgrade(
    target: Target, header: str, value: str, status: int, error: str
) -> None:
    if target.local is None:
        pytest.skip("a foreign target's allowed hosts and origins are its operator's choice")
    port = target.local.port
    url = target.url(target.pipeline("result"))
    if header == "Host":
        # websockets writes Host from the URL: reach 127.0.0.1 under a rebinding name instead.
        options: dict[str, Any] = {"host": "127.0.0.1", "port": port}
        url = f"ws://{value}:{port}" + url.split(str(port), 1)[1]
    else:
        options = {"origin": value}

    async def scenario() -> Any:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, proxy=None, open_timeout=10, additional_headers=target.auth_headers(), **options):
                pass
        return refused.value.response

    response = run(scenario())
    assert response.status_code == status
    assert json.loads(response.body)["error"] == error


@pytest.mark.needs_http
def test_http_without_a_key_gets_the_declared_401_and_health_stays_open(target: Target) -> None:
    keyed(target)
    base = target.http_base
    document = httpx.get(f"{base}/schema/openapi.json", headers=target.auth_headers(), timeout=10, trust_env=False).json()
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    checked = 0
    for path, item in document["paths"].items():
        operation = item.get("get")
        if operation is None or "{" in path:
            continue
        response = httpx.get(base + path, timeout=10, trust_env=False)
        if "security" in operation:
            assert operation["security"] == [{"bearerAuth": []}]
            assert "401" in operation["responses"], path
            assert response.status_code == 401, path
            assert response.json()["error"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
            checked += 1
        else:
            assert response.status_code == 200, path
    assert checked >= 2
    assert httpx.get(f"{base}/health", timeout=10, trust_env=False).status_code == 200
