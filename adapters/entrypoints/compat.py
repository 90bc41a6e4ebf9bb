"""The library internals this server builds on, checked once at start-up before anything imports them.

adapters/transports/litestar/websocket_limits.py and http_limits.py subclasses uvicorn's HTTP and WebSocket
protocols and drives the websockets and h11 state machines underneath them;
adapters/transports/websockets/connection_limits.py replaces the websockets connection's reading,
its message queue and its pending writes;
adapters/plugins/tracking.py advances supervision's ByteTrack by hand over
dropped frames. None of that is those libraries' public API, so pyproject.toml
pins them to the series it was written against. An environment assembled
another way (a hand-edited constraint, `--no-deps`, a distribution's package)
can still hold other releases: then this says which library, which release and
which range is supported, in one line and with exit status 2, instead of an
AttributeError in the middle of the first connection or frame.

Only names are checked, not behaviour: the pins are what keeps the behaviour.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.metadata
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Supported ranges, as pyproject.toml declares them (tests/packaging/test_dependencies.py keeps the two equal).
SUPPORTED_RANGES: dict[str, str] = {
    "uvicorn": ">=0.54,<0.55",
    "websockets": ">=17.4,<17.5",
    "h11": ">=0.16",
    "supervision": ">=0.30.9,<0.31",
}


class LibraryCompatibilityError(Exception):
    """An installed library lacks something this server uses; the message is the operator's one line."""


@dataclass(frozen=True, slots=True)
class Reliance:
    """One class (or module-level object) of a library and the names on it that the server uses.

    `attributes` are looked up on the object itself (methods, class
    attributes, enum members, properties); `instance_attributes` are those its
    instances get by assignment (`self.name = ...` in its class or a base),
    found in the library's source since making an instance needs a running
    server.
    """

    distribution: str
    module: str
    name: str
    attributes: tuple[str, ...] = ()
    instance_attributes: tuple[str, ...] = field(default=())


RELIANCES: tuple[Reliance, ...] = (
    Reliance("uvicorn", "uvicorn.config", "Config"),
    Reliance("uvicorn", "uvicorn.protocols.utils", "ClientDisconnected"),
    Reliance("uvicorn", "uvicorn.server", "ServerState"),
    Reliance("uvicorn", "uvicorn.server", "Server", ("startup", "shutdown", "run"), ("servers",)),
    Reliance(
        "uvicorn",
        "uvicorn.protocols.http.h11_impl",
        "H11Protocol",
        ("connection_made", "connection_lost", "data_received", "on_response_complete"),
        ("conn", "loop", "transport", "client", "scope", "cycle"),
    ),
    Reliance(
        "uvicorn",
        "uvicorn.protocols.http.h11_impl",
        "RequestResponseCycle",
        (),
        ("response_started", "disconnected", "message_event"),
    ),
    Reliance(
        "uvicorn",
        "uvicorn.protocols.websockets.websockets_sansio_impl",
        "WebSocketsSansIOProtocol",
        (
            "data_received", "handle_events", "handle_parser_exception", "receive", "connection_lost",
            "handle_text", "handle_bytes", "handle_cont", "handle_close", "handle_ping", "handle_pong",
            "send_receive_event_to_app", "resume_writing", "send", "keepalive_timeout", "shutdown",
        ),
        (
            "conn", "loop", "transport", "client", "queue", "frames", "curr_msg_data_type", "close_sent",
            "handshake_initiated", "handshake_complete", "initial_response", "disconnected", "writable",
            "close_timer", "close_timeout", "read_paused",
        ),
    ),
    Reliance(
        "websockets",
        "websockets.server",
        "ServerProtocol",
        ("receive_data", "data_to_send", "fail", "send_binary", "send_text"),
        ("parser_exc", "handshake_exc"),
    ),
    Reliance("websockets", "websockets.exceptions", "InvalidState"),
    Reliance("websockets", "websockets.frames", "Opcode", ("PONG",)),
    Reliance(
        "websockets",
        "websockets.asyncio.connection",
        "Connection",
        ("connection_made", "connection_lost", "data_received", "eof_received"),
        ("transport", "protocol", "recv_messages"),
    ),
    Reliance("websockets", "websockets.asyncio.messages", "SimpleQueue", ("put", "get", "put_back")),
    Reliance("websockets", "websockets.asyncio.messages", "Assembler", (), ("frames", "high", "low", "pause", "resume")),
    Reliance("websockets", "websockets.protocol", "Protocol", ("fail",), ("writes",)),
    Reliance("h11", "h11", "Connection", ("trailing_data", "their_state")),
    Reliance("h11", "h11", "IDLE"),
    Reliance("h11", "h11", "SEND_BODY"),
    Reliance(
        "supervision",
        "supervision.tracker.byte_tracker.core",
        "ByteTrack",
        ("update_with_detections",),
        ("tracked_tracks", "lost_tracks", "frame_id", "shared_kalman", "max_time_lost"),
    ),
    Reliance(
        "supervision",
        "supervision.tracker.byte_tracker.single_object_track",
        "STrack",
        ("multi_predict",),
        ("is_activated", "frame_id", "state"),
    ),
    Reliance("supervision", "supervision.tracker.byte_tracker.single_object_track", "TrackState", ("Removed",)),
)


@functools.cache
def _module_tree(path: str) -> ast.Module:
    return ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)


def _class_nodes(klass: type) -> list[ast.ClassDef]:
    try:
        path = inspect.getsourcefile(klass)
    except TypeError:
        return []  # a built-in or compiled class: what it assigns cannot be seen, so it adds nothing
    if path is None or not Path(path).is_file():
        return []
    return [node for node in _module_tree(path).body if isinstance(node, ast.ClassDef) and node.name == klass.__name__]


def _assigned_on_self(cls: type, wanted: Iterable[str]) -> set[str]:
    """Those of `wanted` assigned as `self.<name>` in the source of the class or its bases (read only as far as needed)."""
    wanted = set(wanted)
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object or wanted <= names:
            break
        for class_node in _class_nodes(klass):
            for node in ast.walk(class_node):
                targets: Iterable[ast.expr]
                if isinstance(node, ast.Assign):
                    targets = node.targets
                elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                    targets = (node.target,)
                else:
                    continue
                for target in targets:
                    for element in ast.walk(target):
                        if isinstance(element, ast.Attribute) and isinstance(element.value, ast.Name) and element.value.id == "self":
                            names.add(element.attr)
    return names & wanted


def missing_names(reliance: Reliance) -> list[str]:
    """What the installed library lacks of this reliance, as dotted names; empty when all is there."""
    try:
        module = importlib.import_module(reliance.module)
    except ImportError:
        return [reliance.module]
    target = getattr(module, reliance.name, None)
    qualified = f"{reliance.module}.{reliance.name}"
    if target is None:
        return [qualified]
    if not isinstance(target, type):
        # A class behind a deprecation proxy (supervision's ByteTrack): the class itself, without the warning.
        target = getattr(target, "__wrapped__", target)
    missing = [f"{qualified}.{name}" for name in reliance.attributes if not hasattr(target, name)]
    if reliance.instance_attributes:
        assigned = _assigned_on_self(target, reliance.instance_attributes) if isinstance(target, type) else set()
        missing += [f"{qualified}().{name}" for name in reliance.instance_attributes if name not in assigned]
    return missing


def installed_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def check_library_internals(reliances: Iterable[Reliance] = RELIANCES) -> None:
    """Raise LibraryCompatibilityError naming the first library that lacks something the server uses."""
    missing_by_library: dict[str, list[str]] = {}
    for reliance in reliances:
        missing = missing_names(reliance)
        if missing:
            missing_by_library.setdefault(reliance.distribution, []).extend(missing)
    for distribution, missing in missing_by_library.items():
        missing = list(dict.fromkeys(missing))  # a missing module is missed by every reliance on it
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise LibraryCompatibilityError(
            f"{distribution} {installed_version(distribution)} is not supported (supported: {distribution}"
            f"{SUPPORTED_RANGES.get(distribution, '')}); it lacks {shown}, which this server uses"
        )
