"""Unauthorized WebSocket attempts against a keyed server: their rate, /health meanwhile, and that no slot is lost.

    .venv/bin/python bench/access_flood.py [--attempts 1000] [--concurrency 50]

Starts `forgesyte-stream serve` (tests/support/server.py) with an API key file
and MAX_SESSIONS=2, floods it with handshakes that present no key (each is
accepted, answered `unauthorized` and closed with 3000), polls /health every
20 ms meanwhile, then checks that a keyed client is still served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.media import jpeg  # noqa: E402
from tests.support.server import start_server  # noqa: E402

KEY = "bench-flood-key-0123456789abcdef"


async def refused(url: str) -> int | None:
    async with connect(url, proxy=None, open_timeout=30) as connection:
        try:
            async for _ in connection:
                pass
        except Exception:  # websockets raises on a 3000 close; the code is what is measured
            pass
        return connection.close_code


async def measure(attempts: int, concurrency: int) -> None:
    keys = Path(tempfile.mkdtemp()) / "keys"
    keys.write_text(f"bench {KEY}\n", encoding="utf-8")
    server = start_server(
        {"FORGESYTE_STREAM_API_KEYS_FILE": str(keys), "FORGESYTE_STREAM_LOG_LEVEL": "error", "FORGESYTE_STREAM_MAX_SESSIONS": "2"}
    )
    latencies: list[float] = []
    stop = asyncio.Event()

    async def poll_health() -> None:
        async with httpx.AsyncClient(trust_env=False) as client:
            while not stop.is_set():
                started = time.perf_counter()
                await client.get(f"{server.http}/health")
                latencies.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.02)

    try:
        poller = asyncio.create_task(poll_health())
        gate = asyncio.Semaphore(concurrency)
        codes: list[int | None] = []

        async def one() -> None:
            async with gate:
                codes.append(await refused(server.ws("probe")))

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(attempts)))
        elapsed = time.perf_counter() - started
        stop.set()
        await poller
        async with connect(server.ws("probe"), proxy=None, additional_headers={"Authorization": f"Bearer {KEY}"}) as keyed:
            await keyed.send(jpeg())
            served = "result" in json.loads(await keyed.recv())
        ordered = sorted(latencies)
        print(
            f"{attempts} unauthorized attempts, {concurrency} at a time: {elapsed:.2f} s ({attempts / elapsed:.0f}/s); "
            f"close codes {sorted(set(codes), key=str)}; sessions_active after: {server.health()['sessions_active']}; "
            f"keyed client served after: {served}"
        )
        print(
            f"/health meanwhile (client in the same process): n={len(ordered)} p50={statistics.median(ordered):.1f} ms "
            f"p99={ordered[max(0, int(len(ordered) * 0.99) - 1)]:.1f} ms max={ordered[-1]:.1f} ms"
        )
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(measure(args.attempts, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
