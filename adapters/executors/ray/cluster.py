"""Joins the Ray cluster the front end runs its actors on.

Joining authenticates the way Ray's CLI does: `ray start --head` turns token
authentication on whenever it finds a token, but `ray.init(address=...)` sends
none unless RAY_AUTH_MODE=token, so a token found by the CLI's rules turns
that mode on for this process.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from adapters.executors.ray.wire import RayClusterUnreachable
from adapters.settings import PREFIX, Settings

NAMESPACE = "forgesyte-stream"
# How long a front end keeps running without its cluster's GCS (Ray's default: 60 s, then exit).
DRIVER_OUTLIVES_CLUSTER_S = 365 * 24 * 3600
# Where Ray's CLI and ray.init look for the cluster's token, in this order.
TOKEN_SETTINGS = "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def gcs_answers(address: str, timeout_s: float) -> OSError | None:
    """None if the head's GCS port accepts a connection, else why not."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except OSError as error:
        return error


def _check_reachable(address: str) -> None:
    """Fail fast and clearly: ray.init against a dead address retries for a minute before it gives up."""
    error = gcs_answers(address, 3.0)
    if error is not None:
        raise RayClusterUnreachable(
            f"{PREFIX}RAY_ADDRESS={address!r}: no Ray cluster answers there ({error.strerror or error}); "
            "start one with `ray start --head --port PORT` or unset the variable for a local cluster"
        )


def _readable_token(path: Path) -> bool:
    try:
        return bool(path.read_text(encoding="utf-8", errors="replace").strip())
    except OSError:
        return False


def token_source() -> str | None:
    """Where Ray will read this process's cluster token from, by the CLI's rules; None if nowhere.

    Names the place only: the token itself is never read into a message or a log.
    """
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH", "")
    if named:
        if not _readable_token(Path(named).expanduser()):
            raise RayClusterUnreachable(
                f"RAY_AUTH_TOKEN_PATH={named!r}: the file cannot be read or is empty; "
                "it must hold the cluster's token (`ray get-auth-token` on the head prints it)"
            )
        return f"RAY_AUTH_TOKEN_PATH ({named})"
    if _readable_token(Path.home() / ".ray" / "auth_token"):
        return "~/.ray/auth_token"
    return None


def _use_token_if_present() -> str | None:
    """Authenticate as `ray start` does: with token mode on whenever a token is found and no mode is set."""
    source = token_source()
    if source is not None and os.environ.get("RAY_AUTH_MODE") is None:
        # Before Ray reads its configuration: set here, it reaches ray.init and every Ray thread of this process.
        os.environ["RAY_AUTH_MODE"] = "token"
    return source


def _join_failure(address: str, error: BaseException, source: str | None) -> str:
    """The operator's one line when a cluster that answers its port does not let this process join."""
    cause = " ".join(f"{type(error).__name__}: {error}".split())
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        hint = f"RAY_AUTH_MODE={mode!r} sends no token; a cluster started with one refuses this process"
    elif source is None:
        hint = (
            f"no Ray token was found ({TOKEN_SETTINGS}); a cluster started by `ray start` with a token "
            "refuses a process without it: copy the head's token (`ray get-auth-token` there) to one of those"
        )
    else:
        hint = (
            f"if the cluster refused the token from {source}, give this process the cluster's own "
            f"(`ray get-auth-token` on the head) in {TOKEN_SETTINGS}"
        )
    return f"{PREFIX}RAY_ADDRESS={address!r}: cannot join the Ray cluster ({cause}); {hint}"


def connect(settings: Settings) -> tuple[Any, bool]:
    """Join the configured cluster (or start a local one): the ray module, and whether this call connected.

    A process already connected (a test session's cluster) is used as it is and left connected at shutdown.
    """
    address = settings.ray_address
    source = None
    if address is not None:
        _check_reachable(address)
        source = _use_token_if_present()
    host = address.rpartition(":")[0] if address is not None else "127.0.0.1"
    if _loopback(host.strip("[]")):
        # A cluster on this machine only: Ray otherwise advertises and binds the machine's
        # external address, which a single-machine deployment has no reason to expose.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # By default a Ray driver exits when the cluster's GCS stays unreachable for a minute: that would
    # take the front end, and every session on it, down with the cluster. It stays up instead and
    # answers each frame with pipeline_failure while /health reports the cluster unreachable.
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(DRIVER_OUTLIVES_CLUSTER_S))
    import ray

    if ray.is_initialized():
        return ray, False
    options: dict[str, Any] = {
        "namespace": NAMESPACE,
        # The server's stdout is one JSON record per line; actors' prints stay in Ray's own logs.
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if address is None:
        options["include_dashboard"] = False
        # One machine: Ray's CPUs are placement units, so the actors asked for always fit.
        needed = settings.ray_actors * settings.ray_actor_cpus
        options["num_cpus"] = max(os.cpu_count() or 1, math.ceil(needed))
    # ray.init replaces the driver's SIGTERM handler with one that exits at once; the server's own
    # (graceful drain, then death by the signal) stays in charge, as it is without Ray.
    previous_sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        # "local" always starts a new instance; None would join whatever cluster /tmp/ray last recorded.
        ray.init(address=address or "local", **options)
    except Exception as error:
        if address is not None:
            raise RayClusterUnreachable(_join_failure(address, error, source)) from None
        raise RayClusterUnreachable(
            f"{PREFIX}EXECUTOR=ray (local cluster): cannot start a local Ray instance: {type(error).__name__}: {error}"
        ) from None
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return ray, True
