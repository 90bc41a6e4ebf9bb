"""The start-up check of the library internals the server uses (adapters/entrypoints/compat.py).

The check runs against the libraries installed here; a missing name is made by
deleting it from the real class (monkeypatch in-process, `del` in a real
`forgesyte-stream serve` process), never by a stand-in class.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import time

import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from adapters.entrypoints.compat import RELIANCES, SUPPORTED_RANGES, LibraryCompatibilityError, Reliance, check_library_internals, missing_names
from contracts.targets import free_port
from tests.support.server import ROOT


def test_the_installed_libraries_have_everything_the_server_uses() -> None:
    check_library_internals()
    assert {reliance.distribution for reliance in RELIANCES} == set(SUPPORTED_RANGES)


def test_a_missing_method_names_library_version_and_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(H11Protocol, "on_response_complete")
    with pytest.raises(LibraryCompatibilityError) as raised:
        check_library_internals()
    message = str(raised.value)
    assert "\n" not in message
    assert f"uvicorn {importlib.metadata.version('uvicorn')} is not supported" in message
    assert "uvicorn>=0.54,<0.55" in message
    assert "uvicorn.protocols.http.h11_impl.H11Protocol.on_response_complete" in message


def test_several_missing_names_are_counted_not_all_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("handle_text", "handle_bytes", "handle_cont", "handle_close", "handle_ping"):
        monkeypatch.delattr(WebSocketsSansIOProtocol, name)
    with pytest.raises(LibraryCompatibilityError, match=r"handle_bytes, .*handle_cont and 2 more, which this server uses$"):
        check_library_internals()


def test_an_instance_attribute_the_library_never_assigns_is_missing() -> None:
    reliance = Reliance("supervision", "supervision.tracker.byte_tracker.core", "ByteTrack", (), ("lost_tracks", "no_such_track_list"))
    assert missing_names(reliance) == ["supervision.tracker.byte_tracker.core.ByteTrack().no_such_track_list"]


def test_a_missing_module_is_named() -> None:
    reliance = Reliance("supervision", "supervision.tracker.no_such_tracker", "ByteTrack", ("update_with_detections",))
    with pytest.raises(LibraryCompatibilityError, match=r"supervision .* lacks supervision\.tracker\.no_such_tracker,"):
        check_library_internals([reliance])


def test_serve_exits_2_with_one_line_before_it_listens() -> None:
    """The real command, in a process whose uvicorn lacks a method the guarded protocol overrides."""
    port = free_port()
    program = textwrap.dedent(
        """
        import sys
        import uvicorn.protocols.websockets.websockets_sansio_impl as impl
        del impl.WebSocketsSansIOProtocol.send_receive_event_to_app
        from adapters.entrypoints.cli import main
        sys.exit(main(["serve", "--host", "127.0.0.1", "--port", sys.argv[1]]))
        """
    )
    environment = {key: value for key, value in os.environ.items() if not key.startswith("FORGESYTE_STREAM_")}
    environment["PYTHONPATH"] = str(ROOT)
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", program, str(port)], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(f"serve did not stop on the missing method; it ran for 60 s:\n{timeout.stderr}")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"forgesyte-stream: unsupported library: uvicorn {importlib.metadata.version('uvicorn')} is not supported")
    assert "(supported: uvicorn>=0.54,<0.55)" in lines[0]
    assert "WebSocketsSansIOProtocol.send_receive_event_to_app" in lines[0]
    assert time.monotonic() - started < 30


def test_a_module_missed_by_several_reliances_is_named_once() -> None:
    reliances = [
        Reliance("supervision", "supervision.tracker.no_such_tracker", "STrack", ("multi_predict",)),
        Reliance("supervision", "supervision.tracker.no_such_tracker", "TrackState", ("Removed",)),
    ]
    with pytest.raises(LibraryCompatibilityError) as raised:
        check_library_internals(reliances)
    assert str(raised.value).count("no_such_tracker") == 1
