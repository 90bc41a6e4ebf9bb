"""The stream contract's message-level cases over WebRTC: a WHIP publisher, replies on the `results` data channel.

The same declared messages, checked the same way (every message validated
against asyncapi.yaml and counted in the target's coverage), plus what the
results channel adds: each decoded frame answered once, numbered from 0,
with its RTP timestamp. The cases need a target that serves WHIP and
announces a loopback candidate (FORGESYTE_STREAM_WEBRTC_HOST_ADDRESSES=127.0.0.1,
as the self-started targets are given): this suite's publisher talks over
127.0.0.1 only. Others are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from contracts.targets import Target
from contracts.whip_client import ClipTrack, Publisher, loopback_only, publish

T = TypeVar("T")
VIDEO_STEP = 3000  # 90 kHz at 30 fps


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    with loopback_only():
        return asyncio.run(coroutine)


def pictures(count: int, width: int = 160, height: int = 120) -> list[np.ndarray[Any, Any]]:
    """Frames that differ from each other, so that the encoder sends real inter frames."""
    base = np.add.outer(np.arange(height), np.arange(width)).astype(np.uint8)
    return [np.dstack([np.roll(base, 3 * number, axis=1)] * 3) for number in range(count)]


def whip_target(target: Target) -> str:
    """The target's HTTP base when it can take this suite's WHIP publisher; skips otherwise, saying why."""
    if target.http_base is None:
        pytest.skip(f"{target.name} has no HTTP API, so no WHIP endpoint")
    host = urlsplit(target.http_base).hostname
    if host not in ("127.0.0.1", "localhost"):
        pytest.skip(f"{target.name} is not on loopback; the suite's WebRTC publisher talks over 127.0.0.1 only")
    document = httpx.get(f"{target.http_base}/schema/openapi.json", headers=target.auth_headers(), timeout=10, trust_env=False)
    if document.status_code != 200 or "/v1/whip" not in document.json().get("paths", {}):
        pytest.skip(f"{target.name} declares no /v1/whip endpoint")
    return target.http_base


async def published(target: Target, role: str, track: ClipTrack) -> Publisher:
    publisher = await publish(
        whip_target(target), target.pipeline(role), track, api_key=target.api_key, contract=target.coverage.contract, observer=target.coverage
    )
    if not isinstance(publisher, Publisher):
        raise AssertionError(f"WHIP POST answered {publisher.status_code}: {publisher.text}")
    if "127.0.0.1" not in publisher.pc.remoteDescription.sdp:
        await publisher.delete()  # its slot back at once, not at the target's connect timeout
        await publisher.close()
        pytest.skip(f"{target.name} announces no loopback candidate: start it with FORGESYTE_STREAM_WEBRTC_HOST_ADDRESSES=127.0.0.1")
    return publisher


def one_reply_per_decoded_frame(publisher: Publisher, at_least: int) -> list[dict[str, Any]]:
    replies = publisher.replies_in_order(at_least)
    stamps = [m["rtp_timestamp"] for m in replies]
    assert all(0 < (later - earlier) % 2**32 < 90_000 for earlier, later in zip(stamps, stamps[1:])), "RTP timestamps follow the frames"
    return replies


def test_every_decoded_frame_gets_one_result_on_the_results_channel(target: Target) -> None:
    whip_target(target)

    async def scenario() -> Publisher:
        publisher = await published(target, "result", ClipTrack(pictures(16), fps=10))
        assert await publisher.finish(15, 20) == 200
        return publisher

    replies = one_reply_per_decoded_frame(run(scenario()), 15)
    assert all("result" in m for m in replies), "a pipeline that keeps up runs every frame"


def test_a_slow_pipeline_answers_waiting_frames_as_dropped_and_warns_over_webrtc(target: Target) -> None:
    whip_target(target)

    async def scenario() -> Publisher:
        publisher = await published(target, "slow", ClipTrack(pictures(46), fps=30))
        await publisher.finish(45, 20)
        return publisher

    publisher = run(scenario())
    replies = one_reply_per_decoded_frame(publisher, 45)
    causes = {m["cause"] for m in replies if m.get("dropped")}
    assert causes and causes <= {"lagging", "buffer_full", "closing"}
    assert any(m.get("warning") == "slow_down" for m in publisher.messages)


def test_pipeline_failure_answers_its_frame_and_the_webrtc_session_goes_on(target: Target) -> None:
    whip_target(target)

    async def scenario() -> Publisher:
        publisher = await published(target, "failing", ClipTrack(pictures(9), fps=10))
        await publisher.finish(8, 20)
        return publisher

    replies = one_reply_per_decoded_frame(run(scenario()), 8)
    kinds = {("error" if "error" in m else "result") for m in replies}
    assert kinds == {"error", "result"}
    assert {m["error"] for m in replies if "error" in m} == {"pipeline_failure"}


def test_a_silent_publisher_gets_idle_timeout_then_the_channel_closes(target: Target) -> None:
    whip_target(target)

    async def scenario() -> tuple[Publisher, float]:
        publisher = await published(target, "result", ClipTrack(pictures(3), fps=10))
        await publisher.wait_for(2, 10)
        started = time.monotonic()
        closed = await publisher.wait_closed(target.idle_timeout_s + 10)
        await publisher.close()
        assert closed, "the channel closes after the closing error"
        return publisher, time.monotonic() - started

    publisher, waited = run(scenario())
    assert publisher.errors()[-1]["error"] == "idle_timeout"
    assert waited < target.idle_timeout_s + 5


def test_a_message_written_on_the_results_channel_gets_invalid_message(target: Target) -> None:
    whip_target(target)

    async def scenario() -> Publisher:
        publisher = await published(target, "result", ClipTrack(pictures(300), fps=10))
        await publisher.wait_for(2, 10)
        sctp = publisher.pc.sctp
        assert sctp is not None
        next(iter(sctp._data_channels.values())).send("{}")
        assert await publisher.wait_closed(10)
        await publisher.close()
        return publisher

    publisher = run(scenario())
    assert publisher.errors()[-1]["error"] == "invalid_message"
