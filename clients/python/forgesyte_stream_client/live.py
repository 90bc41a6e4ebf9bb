"""The server's live streams (GET /v1/streams), fetched and laid out as a table for `forgesyte-stream-client streams`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from forgesyte_stream_client.errors import ClientError, shorten

_MAX_BODY_BYTES = 16 * 1024 * 1024
# Loopback and private servers are reached directly, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def api_base(url: str) -> str:
    """http(s)://host:port for a server URL given as ws://, wss://, http:// or https:// (any path is dropped)."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http://HOST:PORT (or https://, ws://, wss://) URL, got {url!r}")
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def fetch_streams(url: str, *, api_key: str | None = None, stream_id: str | None = None, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The open streams the server reports (one, when `stream_id` is given); ClientError with the server's error otherwise."""
    path = "/v1/streams" if stream_id is None else f"/v1/streams/{quote(stream_id, safe='')}"
    request = urllib.request.Request(api_base(url) + path, headers={"accept": "application/json"})
    if api_key:
        request.add_header("authorization", f"Bearer {api_key}")
    try:
        with _DIRECT.open(request, timeout=timeout_s) as response:
            body = json.loads(response.read(_MAX_BODY_BYTES))
    except urllib.error.HTTPError as error:
        detail = error.read(4096).decode("utf-8", "replace")
        raise ClientError(f"GET {path} answered {error.code}: {shorten(detail, 300)}") from None
    except (urllib.error.URLError, TimeoutError) as error:
        raise ClientError(f"GET {path} failed: {getattr(error, 'reason', error)}") from None
    except ValueError as error:
        raise ClientError(f"GET {path} did not answer JSON: {error}") from None
    streams = [body] if stream_id is not None else body
    if not isinstance(streams, list) or not all(isinstance(item, dict) for item in streams):
        raise ClientError(f"GET {path}: expected a list of streams, got {shorten(json.dumps(body), 200)}")
    return streams


def _ms(percentiles: Any, key: str) -> str:
    return f"{percentiles[key]:.1f}" if isinstance(percentiles, dict) else "-"


COLUMNS = ("session", "pipeline", "transport", "key", "client", "age s", "in", "answered", "dropped", "failed", "fps in", "fps out", "p50 ms", "p95 ms")


def table_rows(streams: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows = []
    for item in streams:
        dropped = item.get("frames_dropped") or {}
        rows.append(
            (
                str(item.get("session_id", ""))[:8],
                str(item.get("pipeline_id", "")),
                str(item.get("transport", "")),
                str(item.get("key_name", "")),
                str(item.get("remote_address", "")),
                f"{item.get('age_s', 0):.0f}",
                str(item.get("frames_received", 0)),
                str(item.get("frames_answered", 0)),
                str(sum(dropped.values())),
                str(item.get("frames_failed", 0)),
                f"{item.get('fps_in', 0):.1f}",
                f"{item.get('fps_out', 0):.1f}",
                _ms(item.get("latency"), "p50_ms"),
                _ms(item.get("latency"), "p95_ms"),
            )
        )
    return rows


def format_table(streams: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table, one line per stream, then each stream's slowest nodes by p95."""
    rows = table_rows(streams)
    if not rows:
        return "no open streams"
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(COLUMNS)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(COLUMNS, widths, strict=True)).rstrip()]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    for item in streams:
        nodes = sorted(item.get("nodes") or [], key=lambda node: -node["duration"]["p95_ms"])
        if nodes:
            shown = ", ".join(f"{node['node_id']} p50 {node['duration']['p50_ms']:.1f} / p95 {node['duration']['p95_ms']:.1f} ms" for node in nodes[:5])
            lines.append(f"{str(item.get('session_id', ''))[:8]} nodes: {shown}")
    return "\n".join(lines)
