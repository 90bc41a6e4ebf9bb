"""Gated nodes: run a node only when another node's output says the scene changed; otherwise carry its last output.

A detector costs tens of milliseconds a frame while most camera footage is
still most of the time, so a pipeline may put a cheap change measure in
front of it (Frigate's design: detection only where motion is). The rules:

- A gate is a node and one of its outputs; a gated node runs on a frame when
  that output is true and at least `stride` frames have passed since its last
  run (1 by default: every frame the gate is open).
- Otherwise the node's output is carried: its last output, as the node's tool
  carries it (`Tool.carry`: a tracker moves its boxes by its motion model),
  marked `carried: true` with `carried_frames`, the frames since it last ran.
  A node that runs is marked `carried: false`, `carried_frames: 0`.
- A run is forced, whatever the gate says, on a stream's first frame, when the
  frame size changes, when a refresh bound is reached (`max_skip` frames or
  `refresh_ms` since the last run) and when a node's tool says its state needs
  it (`Tool.refresh_due`: a tracker that has lost a track).
- The nodes that share a gate (the same node and output) decide together, once
  per frame: a detector and the tracker and counters after it run on the same
  frames, so a tracker only ever sees frames the detector ran on, with the gap
  since its last update, as it does for dropped frames.
- A frame outside a stream (no state to carry) always runs.

The per-stream memory is one carried output per gated node, replaced at each
run: bounded by the node's own output size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from domain import NodeGate

# Where a gated node's carry lives in its per-stream state (beside what its tool keeps there).
_CARRY_KEY = "gate.carry"

Clock = Callable[[], float]


@dataclass(slots=True)
class _Carry:
    output: Mapping[str, Any]
    frame_index: int
    at_s: float
    size: tuple[int, int]


@dataclass(frozen=True, slots=True)
class GatedNode:
    """A gated node as a plan holds it: its gate, and its tool's optional hooks."""

    node_id: str
    gate: NodeGate
    carry: Callable[[Mapping[str, Any], Any, int], Mapping[str, Any]] | None
    refresh_due: Callable[[Any], bool] | None


class GateKeeper:
    """Decides, per frame and per gate, whether the gated nodes run; remembers and carries their outputs.

    `states(node_id)` gives the node's per-stream state (the run's lease on
    the stream's tool state); `context(node_id)` the node's tool context,
    handed to the tools' hooks.
    """

    __slots__ = ("_clock", "_decisions", "_frame_index", "_now_s", "_size", "_states")

    def __init__(self, states: Callable[[str], dict[str, Any]], frame_index: int, size: tuple[int, int], clock: Clock = time.monotonic) -> None:
        self._states = states
        self._frame_index = frame_index
        self._size = size
        self._clock = clock
        self._now_s = clock()
        self._decisions: dict[tuple[str, str], bool] = {}

    def runs(self, node: GatedNode, group: tuple[GatedNode, ...], gate_output: Mapping[str, Any], context: Callable[[str], Any]) -> bool:
        """Whether `node` runs on this frame; the same answer for every node of its group."""
        key = (node.gate.node, node.gate.output)
        decided = self._decisions.get(key)
        if decided is None:
            decided = self._decisions[key] = (bool(gate_output.get(node.gate.output)) and self._stride_passed(node)) or any(
                self._forced(member, context) for member in group
            )
        return decided

    def _stride_passed(self, node: GatedNode) -> bool:
        stride = node.gate.stride
        if stride == 1:
            return True
        carry = self._states(node.node_id).get(_CARRY_KEY)
        return not isinstance(carry, _Carry) or self._frame_index - carry.frame_index >= stride

    def ran(self, node: GatedNode, output: Mapping[str, Any]) -> dict[str, Any]:
        """Remember the output of a run; the output as the result shows it (marked fresh)."""
        self._states(node.node_id)[_CARRY_KEY] = _Carry(output, self._frame_index, self._now_s, self._size)
        return {**output, "carried": False, "carried_frames": 0}

    def carried(self, node: GatedNode, context: Any) -> dict[str, Any]:
        """The node's output for a frame it does not run on."""
        carry = self._states(node.node_id)[_CARRY_KEY]
        assert isinstance(carry, _Carry), "a node is carried only after a run"
        frames = self._frame_index - carry.frame_index
        output = carry.output if node.carry is None else node.carry(carry.output, context, frames)
        return {**output, "carried": True, "carried_frames": frames}

    def _forced(self, node: GatedNode, context: Callable[[str], Any]) -> bool:
        carry = self._states(node.node_id).get(_CARRY_KEY)
        if not isinstance(carry, _Carry) or carry.size != self._size:
            return True
        gate = node.gate
        if gate.max_skip is not None and self._frame_index - carry.frame_index >= gate.max_skip:
            return True
        if gate.refresh_ms is not None and (self._now_s - carry.at_s) * 1000.0 >= gate.refresh_ms:
            return True
        return node.refresh_due is not None and node.refresh_due(context(node.node_id))
