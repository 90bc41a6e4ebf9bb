"""Tracking over real sockets: one face, one id, one crossing, whether the server drops frames or not.

The shipped `faces_tracked` pipeline (Haar faces, ByteTrack, a line down the
middle of the frame) runs in a real server; the clip is the astronaut's face
moving steadily across the frame. Streamed faster than the pipeline keeps up,
most frames are dropped and the tracker sees gaps of several frames between
updates; streamed one frame per reply, it sees every frame. Either way the
face must keep one tracker_id and cross the line exactly once.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from contracts.client import Received, StreamClient, kind_of
from tests.support.media import moving_face_clip
from tests.support.server import ROOT, RunningServer, start_server

PIPELINE = "faces_tracked"
FRAMES = 120
# A frame every 10 ms: faces on a 640 x 240 frame take 20-60 ms here, so most frames are dropped.
FAST_INTERVAL_S = 0.01
CLIP = moving_face_clip(FRAMES)


@pytest.fixture(scope="module")
def shipped_server() -> Iterator[RunningServer]:
    running = start_server(
        {"FORGESYTE_STREAM_PIPELINES_DIR": str(ROOT / "adapters" / "pipelines"), "FORGESYTE_STREAM_PLUGINS": ""}
    )
    yield running
    running.stop()


async def _fast(server: RunningServer) -> Received:
    client = await StreamClient.connect(server.ws(PIPELINE))
    receiver = asyncio.create_task(client.recv_replies(set(range(FRAMES)), timeout=60))
    await client.send_paced(CLIP, FRAMES, FAST_INTERVAL_S)
    received = await receiver
    await client.close()
    return received


async def _lockstep(server: RunningServer) -> Received:
    client = await StreamClient.connect(server.ws(PIPELINE))
    for frame in CLIP:
        await client.send_raw(frame)
        await client.recv(timeout=30)
    await client.close()
    return client.received


def _results(received: Received) -> list[dict[str, Any]]:
    replies = received.replies()
    assert sorted(replies) == list(range(FRAMES)), "every frame gets a reply"
    assert all(kind_of(answers[0]) in ("result", "dropped") for answers in replies.values())
    return [answers[0] for index, answers in sorted(replies.items()) if kind_of(answers[0]) == "result"]


def _dominant_id_share(results: list[dict[str, Any]]) -> tuple[int | None, float]:
    """The id seen on most results, and the share of all results whose faces carry it."""
    ids = Counter(tid for r in results for tid in {f["tracker_id"] for f in r["result"]["faces"]} if tid is not None)
    if not ids:
        return None, 0.0
    dominant, count = ids.most_common(1)[0]
    return dominant, count / len(results)


def _crossings(server: RunningServer, direction: str) -> float:
    body = httpx.get(f"{server.http}/metrics", timeout=5, trust_env=False).text
    pattern = (
        r'^stream_line_crossings_total\{(?=[^}]*pipeline_id="faces_tracked")(?=[^}]*line="centre")'
        rf'(?=[^}}]*direction="{direction}")[^}}]*\}} (\S+)$'
    )
    match = re.search(pattern, body, re.MULTILINE)
    assert match, "the line's series is declared at start-up"
    return float(match.group(1))


def test_one_face_keeps_one_id_and_crosses_once_with_and_without_drops(shipped_server: RunningServer) -> None:
    # Deltas: the server may have counted other streams' crossings before (tests/ray shares one server).
    in_before, out_before = _crossings(shipped_server, "in"), _crossings(shipped_server, "out")

    fast = asyncio.run(_fast(shipped_server))
    dropped = fast.of_kind("dropped")
    results = _results(fast)
    assert dropped, "streamed faster than the pipeline, frames are dropped"
    assert len(results) >= 5, f"too few results to judge tracking: {len(results)}"
    fast_id, share = _dominant_id_share(results)
    gaps = [b["frame_index"] - a["frame_index"] for a, b in zip(results, results[1:])]
    assert share >= 0.9, f"one tracker_id on {share:.0%} of {len(results)} results (gaps {gaps})"
    assert max(gaps) > 1, "the tracker saw gaps"
    assert results[-1]["result"]["line_counts"] == {"centre": {"in": 1, "out": 0}}
    assert all(r["result"]["line_counts"]["centre"]["in"] <= 1 for r in results)

    slow = _results(asyncio.run(_lockstep(shipped_server)))
    assert len(slow) == FRAMES, "one frame per reply: nothing is dropped"
    slow_id, share = _dominant_id_share(slow)
    assert share >= 0.9, f"one tracker_id on {share:.0%} of the results"
    assert {f["tracker_id"] for r in slow for f in r["result"]["faces"]} == {slow_id}, "a single id, never another"
    # Ids are per stream: each session's first track is 1.
    assert fast_id == slow_id == 1
    assert slow[-1]["result"]["line_counts"] == {"centre": {"in": 1, "out": 0}}
    crossed_at = next(r["frame_index"] for r in slow if r["result"]["line_counts"]["centre"]["in"] == 1)
    assert FRAMES * 0.4 <= crossed_at <= FRAMES * 0.6, f"the crossing is counted where the face passes the middle: {crossed_at}"

    assert _crossings(shipped_server, "in") - in_before == 2.0
    assert _crossings(shipped_server, "out") - out_before == 0.0


def test_one_off_frames_over_http_run_the_tracked_pipelines(shipped_server: RunningServer) -> None:
    """Outside a stream each frame is a stream of one: the face gets id 1, nothing is counted, nothing is kept."""
    for _ in range(2):
        result = _one_off(shipped_server, PIPELINE)
        assert [face["tracker_id"] for face in result["faces"]] == [1]
        assert result["line_counts"] == {"centre": {"in": 0, "out": 0}}
    assert _one_off(shipped_server, "people_counting") == {"people": [], "line_counts": {"door": {"in": 0, "out": 0}}}


def _one_off(server: RunningServer, pipeline: str) -> dict[str, Any]:
    """POST the clip's first frame to the HTTP endpoint; its result."""
    response = httpx.post(
        f"{server.http}/v1/pipelines/{pipeline}/frames",
        content=CLIP[0],
        headers={"Content-Type": "image/jpeg"},
        timeout=30,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["result"]
    return result
