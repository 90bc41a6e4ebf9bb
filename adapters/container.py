"""The one place that wires adapters to the application: a dependency-injector container.

Swapping the transport, the pipeline engine's plugins or the observers means
changing a provider here and nothing in domain/ or application/.
"""

from __future__ import annotations

import importlib
from typing import Any

from dependency_injector import containers, providers

from adapters.transports.shared.access import AccessEvents
from adapters.media.codec import OpenCvJpegDecoder, OpenCvVideoReader
from adapters.observability.logs import LoggingStreamObserver
from adapters.observability.metrics import MetricsExporter, PrometheusAnalytics, PrometheusObserver, new_registry
from adapters.observability.operator_metrics import OperatorMetrics
from adapters.observability.tracing import tracing_from_env
from adapters.observability.webrtc_metrics import WebRtcMetrics
from adapters.pipelines.catalog import JsonPipelineCatalog
from adapters.plugins.ocr import OcrPlugin
from adapters.plugins.opencv_vision import OpenCvVisionPlugin
from adapters.plugins.probe import ProbePlugin
from adapters.plugins.tracking import TrackingPlugin
from adapters.plugins.yolo import YoloPlugin
from adapters.settings import Settings
from adapters.executors.threads import ThreadFrameExecutor
from adapters.transports.webrtc.whip import WebRtcOptions, WhipSessions
from application.access import AccessPolicy, StreamAccess
from application.live_streams import LiveStreams
from application.observers import FanOutPipelineObserver, FanOutStreamObserver
from application.decode_budget import DecodedBytesBudget
from application.pipeline import DagPipelineService
from application.stream_state import StreamStateStore
from application.sessions import InProcessSlots, SessionManager, SessionSlots
from application.single_frame import SingleFrameService
from application.stream import StreamService, StreamSettings
from application.frame_service import FramePipelineService
from application.video_service import VideoFilePipelineService
from domain import BackpressurePolicy
from domain.sampling import KeepEveryNthPolicy


class PluginLoadError(ValueError):
    """An extra plugin that cannot be loaded; the message names the reference."""


def load_extra_plugins(refs: tuple[str, ...]) -> list[Any]:
    """Instantiate the plugins named in FORGESYTE_STREAM_PLUGINS (module:factory)."""
    plugins = []
    for ref in refs:
        module_name, _, attribute = ref.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as error:
            raise PluginLoadError(f"FORGESYTE_STREAM_PLUGINS entry {ref!r} cannot be loaded: {error}") from None
        plugins.append(factory())
    return plugins


def _plugins_by_id(extra: list[Any], *builtin: Any) -> dict[str, Any]:
    by_id: dict[str, Any] = {}
    for plugin in (*builtin, *extra):
        if plugin.plugin_id in by_id:
            raise PluginLoadError(f"two plugins share the plugin_id {plugin.plugin_id!r}")
        by_id[plugin.plugin_id] = plugin
    return by_id


def _policy(settings: Settings) -> BackpressurePolicy:
    common: dict[str, Any] = {
        "drop_threshold": settings.drop_threshold,
        "slowdown_threshold": settings.slowdown_threshold,
        "buffer_capacity": settings.buffer_frames,
        "slowdown_repeat_ms": float(settings.slowdown_repeat_ms),
    }
    if settings.drop_policy == "every_nth":
        return KeepEveryNthPolicy(keep_every=settings.keep_every, **common)
    return BackpressurePolicy(**common)


def _frame_timeout_s(settings: Settings) -> float:
    return settings.frame_timeout_ms / 1000.0


def _stream_settings(settings: Settings) -> StreamSettings:
    return StreamSettings(
        policy=_policy(settings),
        frame_timeout_s=settings.frame_timeout_ms / 1000.0,
        max_frame_bytes=settings.max_frame_bytes,
        idle_timeout_s=settings.idle_timeout_s,
        max_frame_pixels=settings.max_frame_pixels,
    )


def _access_policy(settings: Settings) -> AccessPolicy:
    return settings.access_policy()


def _frame_executor(settings: Settings, frames: FramePipelineService, observer: Any, analytics: Any) -> Any:
    """Where frames' pipelines run (FORGESYTE_STREAM_EXECUTOR): threads of this process, or Ray actors."""
    if settings.executor == "ray":
        from adapters.executors.ray.executor import RayFrameExecutor  # Ray is imported only by a server that uses it

        return RayFrameExecutor(settings, frames, observer, analytics=analytics, worker_service=worker_pipeline_service)
    return ThreadFrameExecutor(frames=frames, workers=settings.inference_workers)


def _stream_observer(*observers: Any) -> FanOutStreamObserver:
    """Logs, metrics and the live streams' statistics always; traces when the OTEL_* variables turn them on."""
    return FanOutStreamObserver(*(observer for observer in observers if observer is not None))


def _pipeline_observer(*observers: Any) -> FanOutPipelineObserver:
    return FanOutPipelineObserver(*(observer for observer in observers if observer is not None))


def _pipeline_nodes(catalog: JsonPipelineCatalog) -> dict[str, list[str]]:
    """Every node of every pipeline: their metric series are declared at 0 before the first frame."""
    return {pipeline_id: [node.id for node in catalog.get(pipeline_id).nodes] for pipeline_id in catalog.ids()}


def _webrtc_options(settings: Settings) -> WebRtcOptions:
    return WebRtcOptions(
        ice_servers=settings.webrtc_ice_servers,
        connect_timeout_s=settings.webrtc_connect_timeout_s,
        send_timeout_s=settings.send_timeout_s,
    )


def _known_pipeline(pipelines: DagPipelineService) -> Any:
    def known(pipeline_id: str) -> bool:
        return pipeline_id in pipelines.pipeline_ids()

    return known


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)

    catalog = providers.Singleton(JsonPipelineCatalog, directory=settings.provided.pipelines_dir)
    decoder = providers.Singleton(OpenCvJpegDecoder, max_pixels=settings.provided.max_frame_pixels)
    video_reader = providers.Singleton(OpenCvVideoReader)
    extra_plugins = providers.Singleton(load_extra_plugins, settings.provided.plugins)
    metrics_registry = providers.Singleton(new_registry)
    analytics = providers.Singleton(PrometheusAnalytics, registry=metrics_registry)
    tracking_plugin = providers.Singleton(TrackingPlugin, analytics=analytics)
    plugins = providers.Singleton(
        _plugins_by_id,
        extra_plugins,
        providers.Singleton(OpenCvVisionPlugin),
        providers.Singleton(OcrPlugin),
        providers.Singleton(
            YoloPlugin,
            model_path=settings.provided.yolo_model,
            labels_path=settings.provided.yolo_labels,
            confidence=settings.provided.yolo_confidence,
            iou=settings.provided.yolo_iou,
            providers=settings.provided.onnx_providers,
        ),
        providers.Singleton(ProbePlugin),
        tracking_plugin,
    )
    state_store = providers.Singleton(StreamStateStore)
    # A frame waits for decode memory at most as long as the client waits for its answer.
    decode_budget = providers.Singleton(
        DecodedBytesBudget,
        capacity_bytes=settings.provided.decode_budget_bytes,
        wait_s=providers.Callable(_frame_timeout_s, settings),
    )
    metrics = providers.Singleton(
        PrometheusObserver,
        registry=metrics_registry,
        pipeline_ids=catalog.provided.ids.call(),
        pipeline_nodes=providers.Callable(_pipeline_nodes, catalog),
    )
    live_streams = providers.Singleton(LiveStreams)
    tracing = providers.Singleton(tracing_from_env)
    pipeline_observer = providers.Singleton(_pipeline_observer, metrics, live_streams, tracing)
    pipelines = providers.Singleton(
        DagPipelineService,
        catalog=catalog,
        plugins=plugins,
        decoder=decoder,
        state_store=state_store,
        observer=pipeline_observer,
        max_frame_pixels=settings.provided.max_frame_pixels,
        decode_budget=decode_budget,
    )
    frame_service = providers.Singleton(FramePipelineService, pipelines=pipelines, max_frame_bytes=settings.provided.max_frame_bytes)
    video_service = providers.Singleton(
        VideoFilePipelineService,
        pipelines=pipelines,
        video_reader=video_reader,
        max_frame_bytes=settings.provided.max_frame_bytes,
    )
    frame_executor = providers.Singleton(_frame_executor, settings, frame_service, pipeline_observer, analytics)
    # Counted in this process; adapters.entrypoints.serve hands the workers of `serve --workers N` a shared table instead.
    session_slots = providers.Singleton(
        InProcessSlots, max_sessions=settings.provided.max_sessions, max_per_key=settings.provided.max_sessions_per_key
    )
    session_manager = providers.Singleton(SessionManager, max_sessions=settings.provided.max_sessions, slots=session_slots)
    operator_metrics = providers.Singleton(
        OperatorMetrics, registry=metrics_registry, executor=frame_executor, max_sessions=settings.provided.max_sessions
    )
    metrics_exporter = providers.Singleton(MetricsExporter, registry=metrics_registry, extra=providers.List(operator_metrics))
    log_observer = providers.Singleton(LoggingStreamObserver)
    stream_observer = providers.Singleton(_stream_observer, log_observer, metrics, live_streams, tracing)
    stream_settings = providers.Singleton(_stream_settings, settings)
    stream_service = providers.Singleton(
        StreamService,
        frames=frame_service,
        executor=frame_executor,
        sessions=session_manager,
        observer=stream_observer,
        settings=stream_settings,
    )
    single_frames = providers.Singleton(
        SingleFrameService,
        frames=frame_service,
        executor=frame_executor,
        observer=stream_observer,
        frame_timeout_s=stream_settings.provided.frame_timeout_s,
        max_frame_bytes=settings.provided.max_frame_bytes,
    )
    access_policy = providers.Singleton(_access_policy, settings)
    access_events = providers.Singleton(AccessEvents, metrics=metrics)
    stream_access = providers.Singleton(
        StreamAccess,
        service=stream_service,
        observer=access_events,
        stream_observer=stream_observer,
        slots=session_slots,
    )
    webrtc_metrics = providers.Singleton(WebRtcMetrics, registry=metrics_registry)
    whip_sessions = providers.Singleton(
        WhipSessions,
        stream_access=stream_access,
        access_policy=access_policy,
        options=providers.Singleton(_webrtc_options, settings),
        is_known_pipeline=providers.Singleton(_known_pipeline, pipelines),
        metrics=webrtc_metrics,
    )


def worker_pipeline_service(settings: Settings, observer: Any, analytics: Any) -> FramePipelineService:
    """The pipeline service of a process that runs frames for a front end (a Ray actor).

    The same wiring as the front end's, from the same settings, except where
    the work reports: to the caller's recorders, which send it back with the
    result, instead of to this process's own metrics.
    """
    container = Container(settings=settings)
    container.pipeline_observer.override(providers.Object(observer))
    container.analytics.override(providers.Object(analytics))
    return container.frame_service()


def build_container(settings: Settings, session_slots: SessionSlots | None = None) -> Container:
    """A container for these settings; building the pipelines provider validates every pipeline.

    The tracking nodes' lines and zones are checked too, and their metric series declared.
    `session_slots`: where the session limits are counted when this process is one
    worker of several (adapters.transports.shared.session_slots); None counts in this process.
    """
    container = Container(settings=settings)
    if session_slots is not None:
        container.session_slots.override(providers.Object(session_slots))
    container.pipelines()
    container.tracking_plugin().check_pipelines(container.catalog())
    container.tracing()  # the OTEL_* variables are checked at start-up, like the settings
    return container


def build_app(container: Container) -> Any:
    from adapters.transports.litestar.app import create_app
    from adapters.transports.webrtc.ice import configure_ice

    settings: Settings = container.settings()
    executor = container.frame_executor()
    tracing = container.tracing()
    configure_ice(settings.webrtc_host_addresses, settings.webrtc_port_range)
    whip_sessions = container.whip_sessions()
    return create_app(
        stream_service=container.stream_service(),
        single_frames=container.single_frames(),
        stream_access=container.stream_access(),
        access_policy=container.access_policy(),
        access_events=container.access_events(),
        pipelines=container.pipelines(),
        metrics=container.metrics_exporter(),
        live_streams=container.live_streams(),
        max_body_bytes=settings.ws_max_size,
        whip_sessions=whip_sessions,
        on_shutdown=[whip_sessions.close_all, executor.shutdown] + ([tracing.shutdown] if tracing is not None else []),
    )
