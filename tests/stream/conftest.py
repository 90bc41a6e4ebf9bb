from collections.abc import Iterator

import pytest

from tests.support.server import RunningServer, start_server


@pytest.fixture(scope="package")
def server() -> Iterator[RunningServer]:
    running = start_server({"FORGESYTE_STREAM_FRAME_TIMEOUT_MS": "500", "FORGESYTE_STREAM_MAX_FRAME_BYTES": "100000"})
    yield running
    running.stop()
