"""GET /v1/streams and /v1/streams/{stream_id}: the live sessions of this process, for operators.

The figures are application.live_streams' snapshots, as they are; under
`serve --workers N` each worker answers for its own sessions.
"""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.exceptions import NotFoundException
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_404_NOT_FOUND

from application.live_streams import LiveStreams, StreamSnapshot


def streams_routes(error_body: type[Any]) -> list[Any]:
    """The two handlers, their 404 declared with the unified error body (`error_body`, the app's)."""

    @get(
        "/v1/streams",
        sync_to_thread=False,
        summary="Live streams of this process",
        description=(
            "Every WebSocket session open in the process that answers: pipeline, transport, age, remote address, "
            "API key name (never the key), frame counts, fps in and out over the last 10 s, end-to-end latency "
            "and per-node duration percentiles over the last 256 frames."
        ),
    )
    def list_streams(live_streams: LiveStreams) -> list[StreamSnapshot]:
        return live_streams.snapshot()

    @get(
        "/v1/streams/{stream_id:str}",
        sync_to_thread=False,
        summary="One live stream",
        responses={HTTP_404_NOT_FOUND: ResponseSpec(data_container=error_body, description="not_found: no open session with this id here")},
    )
    def get_stream(stream_id: str, live_streams: LiveStreams) -> StreamSnapshot:
        snapshot = live_streams.get(stream_id)
        if snapshot is None:
            raise NotFoundException(f"no open stream with id {stream_id[:64]!r} in this process; GET /v1/streams lists the open ones")
        return snapshot

    return [list_streams, get_stream]
