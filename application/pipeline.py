"""Runs a pipeline graph over one frame payload."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from application.errors import DecodeBudgetExhausted, PipelineExecutionError, PipelineUnavailableError, UnknownPipelineError
from application.gating import GatedNode, GateKeeper
from application.run_context import FrameContext, NodeContext, RunStates
from application.stream_state import StreamStateStore
from application.json_safe import JsonSafetyError, to_json_safe
from application.ports import (
    Availability,
    DecodeBudget,
    DecodedPicture,
    FrameJob,
    ImageDecoder,
    PipelineCatalog,
    PipelineObserver,
    Plugin,
    Tool,
    declared_outputs,
    max_input_side,
    reads_image,
    returns_json,
    runs_inline,
)
from domain import (
    DEFAULT_MAX_FRAME_PIXELS,
    FrameValidationError,
    JpegInfo,
    PipelineDefinition,
    PipelineNode,
    PipelineValidationError,
    check_frame_pixels,
    jpeg_reduction,
    read_jpeg_info,
)

# The longest header prefix remembered per stream (see DagPipelineService._header_of); a camera's is 0.6-3 KB.
_MAX_REMEMBERED_HEADER_BYTES = 8192


def picture_info(picture: DecodedPicture) -> JpegInfo:
    """A decoded picture described as the tools read a frame's header: its size, three components, one scan.

    Header-only tools (the probe) get the frame size; nothing about JPEG
    coding is claimed beyond what a decoded picture has.
    """
    return JpegInfo(picture.width, picture.height, 3, False, False, b"\x11\x11\x11", 0)


@dataclass(frozen=True, slots=True)
class _Step:
    """One node of a plan: its tool resolved and its predecessors listed, so a run looks nothing up."""

    node_id: str
    plugin_id: str
    tool_id: str
    tool: Tool
    params: Mapping[str, Any]
    predecessors: tuple[str, ...]
    gated: GatedNode | None = None


@dataclass(frozen=True, slots=True)
class _Plan:
    """A pipeline compiled at start-up: the catalogue and the plugins' tools are fixed, so each run only executes."""

    steps: tuple[_Step, ...]
    output_nodes: tuple[str, ...]
    plugins: tuple[Plugin, ...]
    input_side: int | None
    # The side the nodes that always run need (no gate): a frame whose gated nodes all carry decodes only for them.
    ungated_side: int | None
    inline: bool
    json_ready: bool  # every output node's tool promises JSON-ready outputs (Tool.returns_json)
    # The gated nodes by their gate (node, output): they decide together (application.gating).
    gate_groups: Mapping[tuple[str, str], tuple[GatedNode, ...]]


class DagPipelineService:
    """Executes pipeline graphs in topological order.

    Each node receives the initial payload merged with its predecessors'
    outputs; the result is the merge of the output nodes' outputs, made JSON-safe.

    Every frame's JPEG header is read here, before any tool runs, whatever the
    pipeline: the pixel limit holds for header-only pipelines as for decoding
    ones, and the header tells how far the decode can be reduced for this
    pipeline's tools (see Tool.max_input_side).
    """

    def __init__(
        self,
        catalog: PipelineCatalog,
        plugins: Mapping[str, Plugin],
        decoder: ImageDecoder,
        state_store: StreamStateStore,
        observer: PipelineObserver | None = None,
        *,
        max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
        decode_budget: DecodeBudget | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_frame_pixels < 1:
            raise ValueError(f"max_frame_pixels must be at least 1, got {max_frame_pixels}")
        self._catalog = catalog
        self._plugins = dict(plugins)
        self._decoder = decoder
        self._state_store = state_store
        self._observer = observer
        # Optional in the port (PipelineObserver.image_decoded): only an observer that times decodes offers it.
        self._on_decoded = getattr(observer, "image_decoded", None) if observer is not None else None
        self._max_frame_pixels = max_frame_pixels
        self._budget = decode_budget
        self._clock = clock  # the gates' refresh_ms (application.gating)
        for pipeline_id in catalog.ids():
            self._check_tools(catalog.get(pipeline_id))
        # Each node's tool, resolved once: the catalogue and the plugins' tool sets are fixed at start-up.
        self._tools: dict[str, dict[str, Tool]] = {
            pipeline_id: {
                node.id: self._plugins[node.plugin_id].tools()[node.tool_id] for node in catalog.get(pipeline_id).nodes
            }
            for pipeline_id in catalog.ids()
        }
        for pipeline_id in catalog.ids():
            self._check_gates(catalog.get(pipeline_id))
        self._plans = {pipeline_id: self._compile(catalog.get(pipeline_id)) for pipeline_id in catalog.ids()}

    def _compile(self, definition: PipelineDefinition) -> _Plan:
        tools = self._tools[definition.id]
        steps = tuple(
            _Step(
                node.id,
                node.plugin_id,
                node.tool_id,
                tools[node.id],
                node.params,
                tuple(definition.predecessors(node.id)),
                None
                if node.gate is None
                else GatedNode(node.id, node.gate, getattr(tools[node.id], "carry", None), getattr(tools[node.id], "refresh_due", None)),
            )
            for node in (definition.node(node_id) for node_id in definition.order)
        )
        groups: dict[tuple[str, str], list[GatedNode]] = {}
        for step in steps:
            if step.gated is not None:
                groups.setdefault((step.gated.gate.node, step.gated.gate.output), []).append(step.gated)
        return _Plan(
            steps=steps,
            output_nodes=tuple(definition.output_nodes),
            # Each plugin once, for the availability check every run makes.
            plugins=tuple(self._plugins[plugin_id] for plugin_id in dict.fromkeys(step.plugin_id for step in steps)),
            input_side=self._pipeline_input_side(definition, definition.nodes),
            ungated_side=self._pipeline_input_side(definition, [node for node in definition.nodes if node.gate is None]),
            inline=all(runs_inline(step.tool) for step in steps),
            json_ready=all(returns_json(tools[node_id]) for node_id in definition.output_nodes),
            gate_groups={key: tuple(members) for key, members in groups.items()},
        )

    def input_side(self, pipeline_id: str) -> int | None:
        """The longest image side this pipeline's tools work on; None when some tool needs the full frame."""
        plan = self._plans.get(pipeline_id)
        return plan.input_side if plan is not None else None

    def _pipeline_input_side(self, definition: PipelineDefinition, nodes: Sequence[PipelineNode]) -> int | None:
        """The largest side any of these decoding nodes needs: the decode must satisfy every node of the run."""
        needed = 0
        for node in nodes:
            tool = self._tools[definition.id][node.id]
            if runs_inline(tool) or not reads_image(tool):
                continue  # never asks for the image
            try:
                side = max_input_side(tool, node.params)
            except ValueError as exc:
                raise PipelineValidationError(
                    f"{self._catalog.source(definition.id)}: pipeline {definition.id!r}: node {node.id!r}: {exc}"
                ) from None
            if side is None:
                return None
            needed = max(needed, side)
        return needed

    def runs_inline(self, pipeline_id: str) -> bool:
        """True when every tool of the pipeline declares header-bounded work (see the Tool port)."""
        plan = self._plans.get(pipeline_id)
        return plan is not None and plan.inline

    def _check_tools(self, definition: PipelineDefinition) -> None:
        where = f"{self._catalog.source(definition.id)}: pipeline {definition.id!r}"
        for node in definition.nodes:
            plugin = self._plugins.get(node.plugin_id)
            if plugin is None:
                raise PipelineValidationError(
                    f"{where}: node {node.id!r} names unknown plugin {node.plugin_id!r}; "
                    f"known plugins: {sorted(self._plugins)}"
                )
            if node.tool_id not in plugin.tools():
                raise PipelineValidationError(
                    f"{where}: node {node.id!r} names unknown tool {node.tool_id!r} "
                    f"of plugin {node.plugin_id!r}; its tools: {sorted(plugin.tools())}"
                )

    def _check_gates(self, definition: PipelineDefinition) -> None:
        """A gate must name an output its node's tool declares: a misspelt one would never open and never say so."""
        where = f"{self._catalog.source(definition.id)}: pipeline {definition.id!r}"
        for node in definition.nodes:
            gate = node.gate
            if gate is None:
                continue
            gate_node = definition.node(gate.node)
            declared = declared_outputs(self._tools[definition.id][gate.node])
            tool_name = f"{gate_node.plugin_id}.{gate_node.tool_id}"
            if declared is None:
                raise PipelineValidationError(
                    f"{where}: node {node.id!r}: gate node {gate.node!r} ({tool_name}) declares no outputs, so it cannot gate"
                )
            if gate.output not in declared:
                raise PipelineValidationError(
                    f"{where}: node {node.id!r}: gate names output {gate.output!r}, which node {gate.node!r} ({tool_name}) "
                    f"does not produce; it outputs {list(declared)}"
                )

    def pipeline_ids(self) -> list[str]:
        return self._catalog.ids()

    def definition(self, pipeline_id: str) -> PipelineDefinition:
        try:
            return self._catalog.get(pipeline_id)
        except KeyError:
            raise UnknownPipelineError(pipeline_id, self._catalog.ids()) from None

    def availability(self, pipeline_id: str) -> Availability:
        definition = self.definition(pipeline_id)
        reasons = []
        for plugin_id in dict.fromkeys(node.plugin_id for node in definition.nodes):
            status = self._plugins[plugin_id].availability()
            if not status.available:
                reasons.append(f"plugin {plugin_id!r}: {status.reason}")
        return Availability(not reasons, "; ".join(reasons) or None)

    def open_stream(self, stream_id: str) -> None:
        """Give a stream its own tool state, kept across its frames until release_stream."""
        self._state_store.open(stream_id)

    def release_stream(self, stream_id: str) -> None:
        self._state_store.release(stream_id)

    def _header_of(self, image_bytes: bytes, stream_id: str | None) -> JpegInfo:
        """The frame's header reading; the previous frame's, when the stream's encoder repeated its header byte for byte.

        A camera or a browser encodes every frame of a stream with the same
        tables, size and scan layout, so the bytes up to the first scan's
        header repeat; the walk's result (the scan layout, and so the decode
        charge, included) depends on those bytes only, so a frame that starts
        with them has the same reading. One prefix of at most 8 KiB is kept per open
        stream, in the state store, and dropped when the stream is released.
        """
        if stream_id is not None:
            last = self._state_store.header(stream_id)
            if last is not None and type(image_bytes) is bytes and image_bytes.startswith(last[0]):
                return last[1]
        info = read_jpeg_info(image_bytes)
        if stream_id is not None and info.header_bytes <= _MAX_REMEMBERED_HEADER_BYTES and type(image_bytes) is bytes:
            self._state_store.remember_header(stream_id, (image_bytes[: info.header_bytes], info))
        return info

    def run_job(self, job: FrameJob) -> dict[str, Any]:
        """Run a frame's job: its pipeline over its JPEG (or the picture a transport decoded), with its stream's tool state; the pipeline's outputs."""
        return self._run(job.pipeline_id, {"frame_index": job.frame_index, "image_bytes": job.jpeg}, job.stream_id, job.picture)

    def run_pipeline(self, pipeline_id: str, payload: Mapping[str, Any], *, stream_id: str | None = None) -> dict[str, Any]:
        """The user stories' entry: `payload` is `{"frame_index": N, "image_bytes": <JPEG bytes>}`.

        Any other keys reach the entry nodes as inputs, as the stories' payload
        always did: a caller can hand a pipeline detections it made elsewhere.
        """
        return self._run(pipeline_id, payload, stream_id)

    def _run(
        self, pipeline_id: str, payload: Mapping[str, Any], stream_id: str | None, picture: DecodedPicture | None = None
    ) -> dict[str, Any]:
        plan = self._plans.get(pipeline_id)
        if plan is None:
            raise UnknownPipelineError(pipeline_id, self._catalog.ids())
        # A plugin can become unavailable mid-stream; the reasons are gathered only then.
        for plugin in plan.plugins:
            if not plugin.availability().available:
                status = self.availability(pipeline_id)
                if not status.available:
                    raise PipelineUnavailableError(pipeline_id, status.reason or "unavailable")
                break
        run = RunStates(self._state_store, stream_id)
        try:
            return self._run_nodes(pipeline_id, plan, payload, run, stream_id, picture)
        finally:
            run.end()

    def _run_nodes(
        self,
        pipeline_id: str,
        plan: _Plan,
        payload: Mapping[str, Any],
        run: RunStates,
        stream_id: str | None,
        picture: DecodedPicture | None = None,
    ) -> dict[str, Any]:
        image_bytes = payload["image_bytes"]
        info = self._header_of(image_bytes, stream_id) if picture is None else picture_info(picture)
        if info.width * info.height > self._max_frame_pixels:
            check_frame_pixels(info, self._max_frame_pixels)  # raises, with the message
        # No decoding node (input side 0): no decode to reduce.
        gates = plan.gate_groups
        gated_run = bool(gates) and stream_id is not None
        # Until a gated node runs, the frame is decoded only as far as the nodes that always run need.
        side = plan.ungated_side if gated_run else plan.input_side
        reduction = jpeg_reduction(info, side) if side != 0 else 1
        frame = FrameContext(
            int(payload["frame_index"]),
            image_bytes,
            self._decoder,
            {},
            info,
            reduction,
            self._budget,
            pipeline_id=pipeline_id,
            on_decoded=self._on_decoded,
            picture=picture,
        )
        observer = self._observer
        outputs: dict[str, Mapping[str, Any]] = {}
        keeper = GateKeeper(run.node, frame.frame_index, frame.frame_size, self._clock) if gated_run else None
        widened = not gated_run
        started = time.perf_counter()
        failed = True
        try:
            for step in plan.steps:
                node_id = step.node_id
                gated = step.gated
                if gated is not None and keeper is not None:
                    gate = gated.gate
                    group = gates[(gate.node, gate.output)]
                    if not keeper.runs(gated, group, outputs[gate.node], lambda other: NodeContext(frame, run, other)):
                        try:
                            outputs[node_id] = keeper.carried(gated, NodeContext(frame, run, node_id))
                        except Exception as exc:
                            raise PipelineExecutionError(pipeline_id, node_id, step.plugin_id, step.tool_id, exc) from exc
                        if observer is not None:
                            observer.node_skipped(pipeline_id, node_id)
                        continue
                    if not widened:
                        widened = True
                        if plan.input_side != 0:
                            frame.widen(jpeg_reduction(info, plan.input_side))
                inputs: dict[str, Any] = {**payload, **step.params}
                for predecessor in step.predecessors:
                    inputs.update(outputs[predecessor])
                node_started = time.perf_counter()
                node_failed = True
                try:
                    produced = step.tool(inputs, NodeContext(frame, run, node_id))
                    if type(produced) is not dict and not isinstance(produced, Mapping):
                        raise TypeError(f"tool returned {type(produced).__name__}, expected a mapping")
                    node_failed = False
                except (FrameValidationError, DecodeBudgetExhausted):
                    raise  # the frame's or the server's condition, not the tool's failure
                except Exception as exc:
                    raise PipelineExecutionError(pipeline_id, node_id, step.plugin_id, step.tool_id, exc) from exc
                finally:
                    if observer is not None:
                        observer.node_finished(pipeline_id, node_id, (time.perf_counter() - node_started) * 1000.0, failed=node_failed)
                if gated is not None:
                    produced = keeper.ran(gated, produced) if keeper is not None else {**produced, "carried": False, "carried_frames": 0}
                outputs[node_id] = produced
            output_nodes = plan.output_nodes
            merged: Mapping[str, Any]
            if len(output_nodes) == 1:
                merged = outputs[output_nodes[0]]
            else:
                merged = {}
                for node_id in output_nodes:
                    merged.update(outputs[node_id])
            try:
                result: dict[str, Any] = merged if plan.json_ready and type(merged) is dict else to_json_safe(merged)
            except JsonSafetyError as exc:
                last = next(step for step in plan.steps if step.node_id == output_nodes[-1])
                raise PipelineExecutionError(pipeline_id, last.node_id, last.plugin_id, last.tool_id, exc) from exc
            failed = False
            return result
        finally:
            frame.close()
            if observer is not None:
                observer.pipeline_finished(pipeline_id, (time.perf_counter() - started) * 1000.0, failed=failed)
