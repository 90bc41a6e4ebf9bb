from collections.abc import Iterator

import pytest

from tests.support.server import RunningServer, start_server


@pytest.fixture(scope="package")
def server() -> Iterator[RunningServer]:
    running = start_server({"FORGESYTE_STREAM_LOG_LEVEL": "info"})
    yield running
    running.stop()


@pytest.fixture(scope="package")
def base_url(server: RunningServer) -> str:
    return f"ws://127.0.0.1:{server.port}"
