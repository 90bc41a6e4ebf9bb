from collections.abc import Iterator

import pytest

from tests.support.server import RunningServer, start_server


@pytest.fixture(scope="package")
def server() -> Iterator[RunningServer]:
    """One real server at the default log level, shared by the tests that read deltas of its metrics."""
    running = start_server({"FORGESYTE_STREAM_LOG_LEVEL": "info", "FORGESYTE_STREAM_FRAME_TIMEOUT_MS": "500"})
    yield running
    running.stop()
