"""What every transport serves besides the stream: /health, /metrics and the drain at shutdown.

The Litestar app and the websockets adapter both answer these from here, so
swapping transports keeps observability and shutdown behaviour identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from application.pipeline import DagPipelineService
from application.sessions import SessionManager
from application.stream import StreamService

log = structlog.get_logger("forgesyte.server")

HEALTH_PATH = "/health"
METRICS_PATH = "/metrics"


@dataclass(frozen=True)
class Health:
    status: str
    sessions_active: int  # in the process that answered
    pipelines: int
    busy_workers: int
    executor: dict[str, Any]
    # In every worker of the server, what FORGESYTE_STREAM_MAX_SESSIONS bounds; sessions_active with one worker.
    sessions_active_server: int


def health(stream_service: StreamService, pipelines: DagPipelineService) -> Health:
    executor = stream_service.executor_health()
    # Still 200: the process serves sessions and header-only pipelines; "degraded" says its inference
    # does not (a Ray cluster unreachable or short of actors), which executor.cluster details.
    status = "ok" if executor.get("cluster", "ok") == "ok" else "degraded"
    return Health(
        status,
        stream_service.sessions.active_count(),
        len(pipelines.pipeline_ids()),
        stream_service.busy_workers(),
        executor,
        stream_service.sessions.server_active_count(),
    )


async def drain_sessions(sessions: SessionManager, deadline_s: float) -> int:
    """Ask every session to finish and close with 1012, waiting up to the deadline; returns how many were cancelled."""
    log.info("draining_sessions", deadline_s=deadline_s)
    cancelled = await sessions.shutdown(deadline_s)
    if cancelled:
        log.warning("sessions_cancelled_at_deadline", count=cancelled)
    return cancelled
