"""tests/stream's tracking cases on a server whose pipelines run on Ray.

The tracker's state lives on one actor per stream; the line crossings it counts
there reach the front end's /metrics (the cases read `stream_line_crossings_total`
from the server the client talks to, not from the actor).
"""

from __future__ import annotations

from tests.stream.test_tracking_e2e import (  # noqa: F401 - collected here with tests/ray's shipped_server
    test_one_face_keeps_one_id_and_crosses_once_with_and_without_drops,
    test_one_off_frames_over_http_run_the_tracked_pipelines,
)
