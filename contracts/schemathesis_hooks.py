"""Schemathesis hooks for the HTTP contract case (loaded through SCHEMATHESIS_HOOKS).

The suite's fault pipelines exist to drive the stream into pipeline_failure
and internal_error on purpose. Over HTTP the same pipelines would answer 422
and 500 by design, which schemathesis rightly reports as a rejected valid
request and a server error; so it never sends to them. Their ids come from
FORGESYTE_CONTRACT_FAULT_PIPELINES (comma-separated), set by the case.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

FAULT_PIPELINES = frozenset(filter(None, os.environ.get("FORGESYTE_CONTRACT_FAULT_PIPELINES", "").split(",")))


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    return (case.path_parameters or {}).get("pipeline_id") not in FAULT_PIPELINES


# A stream the case keeps open while schemathesis runs (its session id), so that GET /v1/streams/{stream_id}
# is asked for a stream that exists too, not only for ids that answer 404.
OPEN_STREAM = os.environ.get("FORGESYTE_CONTRACT_OPEN_STREAM", "")


# A WHIP session the case opened (its resource id), so that DELETE /v1/whip/sessions/{resource_id} ends a
# session that exists, not only ids that answer 404.
OPEN_WHIP_SESSION = os.environ.get("FORGESYTE_CONTRACT_WHIP_SESSION", "")


@schemathesis.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    """Every other generated stream (or WHIP session) id becomes the open one's (chosen by the generated id, so runs repeat)."""
    if OPEN_STREAM and path_parameters and "stream_id" in path_parameters:
        if len(str(path_parameters["stream_id"])) % 2 == 0:
            return {**path_parameters, "stream_id": OPEN_STREAM}
    if OPEN_WHIP_SESSION and path_parameters and "resource_id" in path_parameters:
        if len(str(path_parameters["resource_id"])) % 2 == 0:
            return {**path_parameters, "resource_id": OPEN_WHIP_SESSION}
    return path_parameters


# The WHIP offer (POST /v1/whip) is SDP text: sent as text is, so that generated strings exercise the
# server's offer checks (and are answered 4xx with the unified error body, as the document declares).
schemathesis.serializer.alias("application/sdp", "text/plain")
