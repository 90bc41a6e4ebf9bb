"""OTLP/HTTP export of finished spans, batched on a thread of its own: the tracing adapter's exporter.

The SDK's span objects and its encoder cost about 30 us of Python per span
(measured while building bench/observability_cost.py), held under the GIL
while the event loop waits for it; a sampled frame here is four to six spans.
So the tracing adapter queues one plain tuple per sampled frame, and this
thread has the adapter write its spans (`write`) straight into the protobuf
messages of opentelemetry-proto, every OTEL_BSP_SCHEDULE_DELAY ms or sooner
when a batch is full.

Configured by the standard variables, read as the OTLP exporter specification
defines them: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is) or
OTEL_EXPORTER_OTLP_ENDPOINT (+ /v1/traces), *_HEADERS, *_TIMEOUT (ms),
*_COMPRESSION (gzip or none), *_CERTIFICATE, and OTEL_BSP_SCHEDULE_DELAY,
OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE (the queue and the
batches count queued items: sampled frames, each of several spans).
"""

from __future__ import annotations

import gzip
import logging
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourceProto

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://localhost:4318/v1/traces"


class ExportConfigError(ValueError):
    """An OTLP exporter variable that cannot be used; the message names it, what it accepts and what it got."""


def _variable(environ: Mapping[str, str], name: str) -> str | None:
    """The traces-specific variable, else the general one (OTEL_EXPORTER_OTLP_TRACES_X, OTEL_EXPORTER_OTLP_X)."""
    return environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or environ.get(f"OTEL_EXPORTER_OTLP_{name}")


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ExportConfigError(f"{name}={raw!r} is not usable; expected a positive integer")
    return value


def _headers(raw: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for part in (raw or "").split(","):
        if not part.strip():
            continue
        name, equals, value = part.partition("=")
        if not equals or not name.strip():
            raise ExportConfigError(f"OTEL_EXPORTER_OTLP_HEADERS entry {name.strip()!r} is not usable; expected key=value pairs separated by commas")
        headers[urllib.parse.unquote(name.strip()).lower()] = urllib.parse.unquote(value.strip())
    return headers


class ExportSettings(NamedTuple):
    endpoint: str
    headers: dict[str, str]
    timeout_s: float
    gzip: bool
    certificate: str | None
    delay_s: float
    max_queue: int
    max_batch: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ExportSettings:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if not endpoint:
            base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            endpoint = base.rstrip("/") + "/v1/traces" if base else DEFAULT_ENDPOINT
        if urllib.parse.urlsplit(endpoint).scheme not in ("http", "https"):
            raise ExportConfigError(f"the OTLP traces endpoint {endpoint!r} is not usable; expected an http:// or https:// URL")
        compression = (_variable(environ, "COMPRESSION") or "none").strip().lower()
        if compression not in ("gzip", "none"):
            raise ExportConfigError(f"OTEL_EXPORTER_OTLP_COMPRESSION={compression!r} is not supported; expected 'gzip' or 'none'")
        timeout_ms = _positive_int({"OTEL_EXPORTER_OTLP_TIMEOUT": _variable(environ, "TIMEOUT") or ""}, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)
        max_queue = _positive_int(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        return cls(
            endpoint=endpoint,
            headers=_headers(_variable(environ, "HEADERS")),
            timeout_s=timeout_ms / 1000.0,
            gzip=compression == "gzip",
            certificate=_variable(environ, "CERTIFICATE"),
            delay_s=_positive_int(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000.0,
            max_queue=max_queue,
            max_batch=min(max_queue, _positive_int(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)),
        )


def _set_value(target: Any, value: str | int | float | bool) -> None:
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    else:
        target.string_value = str(value)


class OtlpSpanBatcher:
    """Queues items (dropping the newest when full, and counting them), expands each into spans and posts them in batches."""

    def __init__(
        self,
        settings: ExportSettings,
        resource_attributes: Mapping[str, Any],
        scope_name: str,
        write: Callable[[Any, Any], int],
    ) -> None:
        """`write(item, spans)` writes an item's spans into `spans` (a ScopeSpans' repeated field) and says how many."""
        self._settings = settings
        self._write = write
        self._resource = ResourceProto()
        for key, value in resource_attributes.items():
            _set_value(self._resource.attributes.add(key=key).value, value)
        self._scope_name = scope_name
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.dropped = 0
        self.exported = 0
        self._last_failure_logged = 0.0
        self._ssl = ssl.create_default_context(cafile=settings.certificate) if settings.certificate else None
        self._thread = threading.Thread(target=self._run, name="forgesyte-otlp-export", daemon=True)
        self._thread.start()

    def add(self, item: Any) -> None:
        """Called on the event loop: an append, and a wake-up only when a batch is full."""
        queue = self._queue
        if len(queue) >= self._settings.max_queue:
            self.dropped += 1
            return
        queue.append(item)
        if len(queue) >= self._settings.max_batch:
            self._wake.set()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Export what is queued, then stop the thread."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._settings.delay_s)
            self._wake.clear()
            self._drain()
        self._drain()

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(len(queue), self._settings.max_batch))]
            try:
                body = self._encode(batch)
            except Exception:  # noqa: BLE001 - a span that cannot be written is a bug here, never the server's failure
                self.dropped += len(batch)
                log.exception("OTLP encoding of %d items failed", len(batch))
                continue
            self._post(body, len(batch))

    def _encode(self, batch: list[Any]) -> bytes:
        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add()
        resource_spans.resource.CopyFrom(self._resource)
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.name = self._scope_name
        spans = scope_spans.spans
        write = self._write
        for item in batch:
            write(item, spans)
        body: bytes = request.SerializeToString()
        return body

    def _post(self, body: bytes, count: int) -> None:
        settings = self._settings
        headers = {**settings.headers, "content-type": "application/x-protobuf"}
        if settings.gzip:
            body = gzip.compress(body)
            headers["content-encoding"] = "gzip"
        request = urllib.request.Request(settings.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=settings.timeout_s, context=self._ssl) as response:
                response.read()
            self.exported += count
        except Exception as error:  # noqa: BLE001 - a collector that is down never stops the server
            self.dropped += count
            now = time.monotonic()
            if now - self._last_failure_logged > 60.0:
                self._last_failure_logged = now
                log.warning("OTLP export of %d spans to %s failed: %s", count, settings.endpoint, error)
