"""What the access-control tests (test_access_origin.py, test_access_keys_tls.py) share: the frame they send,
the API keys they use, and readers of the server's metrics and access-refusal log records."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.observability.support import Scrape, records
from tests.support.media import jpeg
from tests.support.server import RunningServer

FRAME = jpeg()
ALICE_KEY = "alice-3f9c2b7e41d8a6a0e5b1"
BOB_KEY = "bob-0a1b2c3d4e5f60718293"
WRONG_KEY = "wrong-but-long-enough-key-7f"


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def metrics(server: RunningServer, key: str | None = None) -> Scrape:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{server.http}/metrics", headers=headers, timeout=5, trust_env=False, verify=server.tls or True)
    assert response.status_code == 200, response.text
    return Scrape.parse(response.text)


def access_records(server: RunningServer) -> list[dict[str, Any]]:
    return [r for r in records(server) if r.get("event") == "access_refused"]
