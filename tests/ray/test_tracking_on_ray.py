"""tests/stream's tracking and gating cases on a server whose pipelines run on Ray.

The tracker's state, and a gated node's carried output, live on one actor per
stream; the line crossings counted there and the gated nodes' runs and skips
(`stream_node_runs_total`) reach the front end's /metrics (the cases read them
from the server the client talks to, not from the actor).
"""

from __future__ import annotations

from tests.stream.test_gating_e2e import (  # noqa: F401 - collected here with tests/ray's shipped_server
    test_faces_gated_counts_what_faces_tracked_counts_with_a_third_of_the_detector_runs,
    test_frames_that_change_size_mid_stream_run_the_detector_and_carry_only_their_own_size,
)
from tests.stream.test_tracking_e2e import (  # noqa: F401 - collected here with tests/ray's shipped_server
    test_one_face_keeps_one_id_and_crosses_once_with_and_without_drops,
    test_one_off_frames_over_http_run_the_tracked_pipelines,
)
