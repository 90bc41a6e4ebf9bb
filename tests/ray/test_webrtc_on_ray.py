"""A WHIP stream whose decoded frames run on Ray actors: the picture crosses to the actor as its I420 planes."""

from __future__ import annotations

import asyncio

from tests.observability.support import settled
from tests.support.server import RunningServer
from tests.webrtc.whip_support import ClipTrack, Publisher, face_frames, loopback_only, publish


def test_a_webrtc_face_stream_is_answered_from_the_cluster(server: RunningServer) -> None:
    async def scenario() -> Publisher:
        publisher = await publish(server.http, "faces", ClipTrack(face_frames(21), fps=10))
        assert isinstance(publisher, Publisher), publisher.text
        await publisher.finish(20, 30)
        return publisher

    with loopback_only():
        publisher = asyncio.run(scenario())
    replies = publisher.replies_in_order(20)
    results = [m for m in replies if "result" in m]
    assert sum(1 for m in results if m["result"]["faces"]) >= 0.95 * len(results)
    settled(server)
