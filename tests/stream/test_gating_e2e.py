"""Gated pipelines over real sockets: the detector runs only when the scene changes, and nothing that counts is lost.

The shipped `faces_gated` and `people_counting_gated` pipelines run in a real
server beside their ungated twins, on clips of a fixed camera: a still scene
with sensor noise, then a face crossing it (tests/support/media.py), or the
empty path and then real walkers. Streamed one frame per reply (nothing
dropped), the gated pipeline must count the same crossings as the ungated one
with far fewer detector runs, and box the face on the moving frames, carried
or fresh; streamed faster than the pipeline, every frame still gets an answer
and the count stays exact. Frames that change size mid-stream and a corrupt
frame between good ones must neither break the session nor the carry.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from contracts.client import StreamClient, kind_of
from tests.support.media import gated_scene_clip, pedestrian_scene_clip
from tests.support.server import ROOT, RunningServer, start_server

STILL, MOVING = 60, 100
FACES, CENTRES = gated_scene_clip(STILL, MOVING, crossings=2)
SHIPPED = sorted(path.stem for path in (ROOT / "adapters" / "pipelines").glob("*.json"))


@pytest.fixture(scope="module")
def shipped_server() -> Iterator[RunningServer]:
    running = start_server({"FORGESYTE_STREAM_PIPELINES_DIR": str(ROOT / "adapters" / "pipelines"), "FORGESYTE_STREAM_PLUGINS": ""})
    yield running
    running.stop()


def node_runs(server: RunningServer) -> dict[tuple[str, str, str], float]:
    body = httpx.get(f"{server.http}/metrics", timeout=10, trust_env=False).text
    found = {}
    for labels, value in re.findall(r"^stream_node_runs_total\{([^}]*)\} (\S+)$", body, re.MULTILINE):
        parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        found[(parsed["pipeline_id"], parsed["node"], parsed["outcome"])] = float(value)
    return found


async def lockstep(server: RunningServer, pipeline: str, clip: list[bytes]) -> list[dict[str, Any]]:
    client = await StreamClient.connect(server.ws(pipeline), reply_timeout_s=60)
    answers = []
    try:
        for frame in clip:
            await client.send_raw(frame)
            answers.append(await client.recv(timeout=60))
    finally:
        await client.close()
    return answers


def boxed(result: dict[str, Any], centre: tuple[float, float]) -> bool:
    x, y = centre
    return any(f["box"]["x1"] <= x <= f["box"]["x2"] and f["box"]["y1"] <= y <= f["box"]["y2"] for f in result["faces"])


def test_every_node_of_every_pipeline_has_its_run_series_at_zero_before_any_frame(shipped_server: RunningServer) -> None:
    runs = node_runs(shipped_server)
    for pipeline in ("faces_gated", "people_counting_gated", "faces", "motion"):
        assert pipeline in SHIPPED
    for pipeline, node in [("faces_gated", n) for n in ("change", "faces", "track", "lines")] + [("qr", "qr")]:
        assert runs[(pipeline, node, "ran")] == 0.0
        assert runs[(pipeline, node, "skipped")] == 0.0
    assert {pipeline for pipeline, _, _ in runs} == set(SHIPPED)


def test_faces_gated_counts_what_faces_tracked_counts_with_a_third_of_the_detector_runs(shipped_server: RunningServer) -> None:
    before = node_runs(shipped_server)
    gated = asyncio.run(lockstep(shipped_server, "faces_gated", FACES))
    after = node_runs(shipped_server)
    ungated = asyncio.run(lockstep(shipped_server, "faces_tracked", FACES))

    assert all(kind_of(a) == "result" for a in gated + ungated), "file mode: every frame answered with a result"
    assert [a["frame_index"] for a in gated] == list(range(STILL + MOVING))
    results = [a["result"] for a in gated]
    assert results[-1]["line_counts"] == ungated[-1]["result"]["line_counts"] == {"centre": {"in": 1, "out": 1}}

    ran = [not r["carried"] for r in results]
    assert ran[0], "the first frame runs the detector"
    assert sum(ran[:STILL]) <= STILL * 0.06, f"the still part ran the detector {sum(ran[:STILL])} times"
    assert all(r["carried_frames"] == 0 for r in results if not r["carried"])
    ages = [r["carried_frames"] for r in results[:STILL]]
    assert max(ages) == 29, "max_skip 30: a still scene is re-detected every 30th frame"
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    assert delta[("faces_gated", "faces", "ran")] == sum(ran)
    assert delta[("faces_gated", "faces", "skipped")] == len(results) - sum(ran)
    assert delta[("faces_gated", "change", "ran")] == len(results) and delta[("faces_gated", "change", "skipped")] == 0
    assert delta[("faces_gated", "track", "ran")] == delta[("faces_gated", "faces", "ran")], "a gate's nodes decide together"
    assert sum(ran) / len(ran) <= 0.6

    moving = [(r, c) for r, c in zip(results, CENTRES) if c is not None]
    covered = sum(boxed(r, c) for r, c in moving)
    assert covered >= 0.95 * len(moving), f"the face is boxed on {covered} of {len(moving)} moving frames"
    ids = {f["tracker_id"] for r, _ in moving for f in r["faces"]} - {None}  # None: a track not yet confirmed
    assert len(ids) <= 2, f"one track per crossing: {ids}"


# Streamed faster than it runs, the tracker sees gaps of several frames: the face moves 5 pixels a frame here (as in
# test_tracking_e2e.py), so a gap of 4-8 frames is within what ByteTrack associates.
SLOW_FACES, _ = gated_scene_clip(30, 200, crossings=2)


def test_faces_gated_streamed_faster_than_it_runs_answers_every_frame_and_counts_exactly(shipped_server: RunningServer) -> None:
    async def fast() -> Any:
        client = await StreamClient.connect(shipped_server.ws("faces_gated"))
        receiver = asyncio.create_task(client.recv_replies(set(range(len(SLOW_FACES))), timeout=90))
        await client.send_paced(SLOW_FACES, len(SLOW_FACES), 0.01)
        received = await receiver
        await client.close()
        return received

    received = asyncio.run(fast())
    replies = received.replies()
    assert sorted(replies) == list(range(len(SLOW_FACES))), "every frame gets an answer"
    dropped = received.of_kind("dropped")
    results = [answers[0]["result"] for _, answers in sorted(replies.items()) if kind_of(answers[0]) == "result"]
    assert dropped, "sent faster than the detector runs on the moving part, frames are dropped"
    assert all("carried" in r and "carried_frames" in r for r in results)
    assert results[-1]["line_counts"] == {"centre": {"in": 1, "out": 1}}


def test_people_counting_gated_counts_the_walkers_people_counting_counts(shipped_server: RunningServer) -> None:
    clip = pedestrian_scene_clip(10, 50, after=10)  # the walker crosses the door line on the 44th moving frame
    gated = [a["result"] for a in asyncio.run(lockstep(shipped_server, "people_counting_gated", clip))]
    ungated = [a["result"] for a in asyncio.run(lockstep(shipped_server, "people_counting", clip))]
    assert gated[-1]["line_counts"] == ungated[-1]["line_counts"] == {"door": {"in": 1, "out": 0}}
    still = [not r["carried"] for r in gated[:10] + gated[60:]]
    assert sum(still) <= 5, f"the empty path ran the detector {sum(still)} times of 20"


def test_frames_that_change_size_mid_stream_run_the_detector_and_carry_only_their_own_size(shipped_server: RunningServer) -> None:
    small = [cv2.imencode(".jpg", cv2.resize(cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR), (320, 240)))[1].tobytes() for f in FACES[:6]]
    sequence = [FACES[0], FACES[1], small[2], small[3], FACES[4], FACES[5]]
    answers = asyncio.run(lockstep(shipped_server, "faces_gated", sequence))
    results = [a["result"] for a in answers]
    # A size change runs the detector (the carried boxes belong to the other size), and so does the change back.
    assert [r["carried"] for r in results] == [False, True, False, True, False, True]
    for r in results[2:4]:
        assert all(f["box"]["x2"] <= 320 and f["box"]["y2"] <= 240 for f in r["faces"])


def test_a_corrupt_frame_between_good_ones_ends_the_stream_as_the_contract_says_and_the_next_starts_afresh(
    shipped_server: RunningServer,
) -> None:
    corrupt = FACES[3][:200] + b"\x00" * 4000 + FACES[3][-2:]

    async def run() -> tuple[list[dict[str, Any]], int | None, dict[str, Any]]:
        client = await StreamClient.connect(shipped_server.ws("faces_gated"))
        answers = []
        for frame in (FACES[0], FACES[1], corrupt):
            await client.send_raw(frame)
            answers.append(await client.recv(timeout=30))
        await asyncio.wait_for(client.connection.wait_closed(), 10)
        again = await StreamClient.connect(shipped_server.ws("faces_gated"))
        await again.send_raw(FACES[2])
        fresh = await again.recv(timeout=30)
        await again.close()
        return answers, client.close_code, fresh

    answers, code, fresh = asyncio.run(run())
    assert [kind_of(a) for a in answers] == ["result", "result", "error"]
    assert answers[1]["result"]["carried"] is True
    assert answers[2]["error"] == "invalid_frame" and code == 1007
    assert fresh["frame_index"] == 0 and fresh["result"]["carried"] is False, "a new stream carries nothing from the last"
    shipped_server.wait_for(lambda health: health["sessions_active"] == 0)
