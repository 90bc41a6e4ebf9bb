"""The Ray executor against a real local cluster: the same results as in process, sticky state, faults.

The executor under test is the real adapter with real actors; the in-process
pipeline service it is compared with is the one the thread executor runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.container import Container, worker_pipeline_service
from adapters.settings import Settings
from application.errors import JobGivenUp, JobStillRunning, PipelineExecutionError
from domain import ErrorCode, FrameValidationError
from tests.ray.conftest import actor, fault_env
from tests.support.media import FACE_JPEG, jpeg


def _settings(**extra: str) -> Settings:
    ray = {"FORGESYTE_STREAM_EXECUTOR": "ray", "FORGESYTE_STREAM_RAY_ACTORS": "2", "FORGESYTE_STREAM_RAY_ACTOR_CPUS": "1"}
    return Settings.from_env(fault_env(**{**ray, **extra}))


class _Front:
    """What a front end holds: its container (in-process service, metrics) and the Ray executor."""

    def __init__(self, settings: Settings) -> None:
        from adapters.executors.ray.executor import RayFrameExecutor

        self.container = Container(settings=settings)
        self.video = self.container.frame_service()
        self.registry = self.container.metrics_registry()
        self.executor = RayFrameExecutor(settings, self.video, self.container.metrics(), worker_service=worker_pipeline_service)


@pytest.fixture(scope="module")
def front(ray_cluster: str) -> Iterator[_Front]:
    built = _Front(_settings())
    yield built
    built.executor.shutdown()


def _run(front: _Front, pipeline_id: str, index: int, data: bytes, stream_id: str | None = None, *, timeout_s: float = 20.0) -> Any:
    from application.ports import FrameJob

    return asyncio.run(front.executor.run(FrameJob(pipeline_id, index, data, stream_id), timeout_s=timeout_s)).to_json()


def _actor_of(front: _Front, stream_id: str) -> str:
    name = front.executor.stream_actor(stream_id)
    assert name is not None
    return name


def test_results_are_identical_to_the_in_process_service(front: _Front) -> None:
    frames = [FACE_JPEG.read_bytes(), jpeg(320, 240, seed=1), jpeg(64, 48, seed=2)]
    for index, data in enumerate(frames):
        for pipeline_id in ("faces", "decode", "counter", "probe"):
            assert _run(front, pipeline_id, index, data) == front.video.run_on_frame(pipeline_id, index, data)
    faces = _run(front, "faces", 0, frames[0])
    assert faces["result"]["faces"], "the astronaut's face is found on the actor"


def test_failures_are_the_same_errors_as_in_process(front: _Front) -> None:
    data = jpeg(seed=3)
    with pytest.raises(PipelineExecutionError) as local:
        front.video.run_on_frame("failing", 0, data)
    with pytest.raises(PipelineExecutionError) as remote:
        _run(front, "failing", 0, data)
    assert (remote.value.detail, remote.value.node_id, remote.value.tool_id) == (local.value.detail, local.value.node_id, local.value.tool_id)
    assert remote.value.log_message == local.value.log_message  # the tool's own message reaches the front end's log
    undecodable = b"\xff\xd8" + b"\x13" * 400 + b"\xff\xd9"
    with pytest.raises(FrameValidationError) as local_frame:
        front.video.run_on_frame("decode", 1, undecodable)
    with pytest.raises(FrameValidationError) as remote_frame:
        _run(front, "decode", 1, undecodable)
    assert remote_frame.value.to_message() == local_frame.value.to_message()
    assert remote_frame.value.code is ErrorCode.INVALID_FRAME


def test_node_and_pipeline_timings_reach_the_front_ends_metrics(front: _Front) -> None:
    def count(name: str, **labels: str) -> float:
        return front.registry.get_sample_value(name, labels) or 0.0

    nodes = count("stream_pipeline_node_duration_seconds_count", pipeline_id="slow", node_id="sleep")
    pipelines = count("stream_pipeline_duration_seconds_count", pipeline_id="slow")
    nodes_sum = count("stream_pipeline_node_duration_seconds_sum", pipeline_id="slow", node_id="sleep")
    for index in range(3):
        _run(front, "slow", index, jpeg(seed=index))
    assert count("stream_pipeline_node_duration_seconds_count", pipeline_id="slow", node_id="sleep") == nodes + 3
    assert count("stream_pipeline_duration_seconds_count", pipeline_id="slow") == pipelines + 3
    # The durations are the actor's: the tool sleeps 100 ms a frame.
    assert count("stream_pipeline_node_duration_seconds_sum", pipeline_id="slow", node_id="sleep") - nodes_sum >= 0.3


def test_a_streams_state_stays_on_one_actor_and_is_released_with_the_stream(front: _Front) -> None:
    data = jpeg(seed=4)
    front.executor.open_stream("sticky-a")
    front.executor.open_stream("sticky-b")
    counts_a = [_run(front, "counter", i, data, "sticky-a")["result"]["count"] for i in range(4)]
    counts_b = [_run(front, "counter", i, data, "sticky-b")["result"]["count"] for i in range(2)]
    assert counts_a == [1, 2, 3, 4] and counts_b == [1, 2]
    home = _actor_of(front, "sticky-a")
    for i in range(4, 8):
        assert _run(front, "counter", i, data, "sticky-a")["result"]["count"] == i + 1
        assert _actor_of(front, "sticky-a") == home
    # Two idle actors, two streams: the second stream went to the other one.
    assert _actor_of(front, "sticky-b") != home
    import ray

    assert ray.get(actor(home).streams.remote()) == 1
    front.executor.release_stream("sticky-a")
    front.executor.release_stream("sticky-b")
    deadline = time.monotonic() + 10
    while ray.get(actor(home).streams.remote()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ray.get(actor(home).streams.remote()) == 0
    assert front.executor.stream_actor("sticky-a") is None
    # A stream id released is never re-created, even by a late frame.
    assert _run(front, "counter", 9, data, "sticky-a")["result"]["count"] == 1


def test_stateless_frames_go_to_the_least_busy_actor(front: _Front) -> None:
    async def two_at_once() -> list[Any]:
        from application.ports import FrameJob

        tasks = [
            asyncio.ensure_future(front.executor.run(FrameJob("slow", i, jpeg(seed=i), None), timeout_s=20))
            for i in range(2)
        ]
        await asyncio.sleep(0.05)
        busy = [entry["busy"] for entry in front.executor.health()["actors"]]
        assert front.executor.busy_workers() == 2
        results = await asyncio.gather(*tasks)
        assert busy == [1, 1], busy
        return results

    assert len(asyncio.run(two_at_once())) == 2
    assert front.executor.busy_workers() == 0


def test_a_slow_tool_costs_its_frame_the_deadline_and_the_stream_waits_for_the_actor(front: _Front) -> None:
    from application.ports import FrameJob

    async def scenario() -> tuple[float, float]:
        started = time.monotonic()
        with pytest.raises(JobStillRunning) as still:
            await front.executor.run(FrameJob("hang", 0, jpeg(), "slow-stream"), timeout_s=0.8)
        failed_after = time.monotonic() - started
        await asyncio.wait({still.value.finished}, timeout=15)
        return failed_after, time.monotonic() - started

    front.executor.open_stream("slow-stream")
    try:
        failed_after, finished_after = asyncio.run(scenario())
        assert 0.8 <= failed_after < 1.45, failed_after  # answered at the deadline, not when the tool returns (1.5 s)
        assert finished_after >= 1.45, finished_after  # the call ends only when the actor is done with it
        assert _run(front, "counter", 1, jpeg(), "slow-stream")["result"]["count"] == 1
        assert all(entry["lost"] == 0 for entry in front.executor.health()["actors"])  # 1.5 s < 3 timeouts: not hung
    finally:
        front.executor.release_stream("slow-stream")


def test_an_actor_stuck_in_a_tool_is_replaced_and_its_stream_goes_on(front: _Front) -> None:
    from application.ports import FrameJob

    async def scenario() -> float:
        started = time.monotonic()
        with pytest.raises(JobStillRunning) as still:
            await front.executor.run(FrameJob("hang", 0, jpeg(), "stuck-stream"), timeout_s=0.2)
        await asyncio.wait({still.value.finished}, timeout=15)
        return time.monotonic() - started

    front.executor.open_stream("stuck-stream")
    try:
        _run(front, "counter", 0, jpeg(), "stuck-stream")
        stuck_on = _actor_of(front, "stuck-stream")
        waited = asyncio.run(scenario())
        # Three timeouts (0.6 s) after the frame started the actor is declared hung and killed,
        # before the tool would have returned (1.5 s): the stream's wait ends there.
        assert waited < 1.4, waited
        assert _run(front, "counter", 1, jpeg(), "stuck-stream")["result"]["count"] == 1
        assert _actor_of(front, "stuck-stream") != stuck_on
    finally:
        front.executor.release_stream("stuck-stream")
    deadline = time.monotonic() + 30
    while not all(entry["state"] == "ready" for entry in front.executor.health()["actors"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [entry["lost"] for entry in front.executor.health()["actors"]].count(1) == 1


def test_giving_up_answers_at_once(front: _Front) -> None:
    from application.ports import FrameJob

    async def scenario() -> float:
        give_up = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.2, give_up.set_result, None)
        started = time.monotonic()
        with pytest.raises(JobGivenUp):
            await front.executor.run(FrameJob("hang", 0, jpeg(), None), timeout_s=10, give_up=give_up)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.2


def test_an_actor_killed_mid_stream_costs_its_frame_and_the_stream_goes_on_elsewhere(ray_cluster: str) -> None:
    import ray

    from adapters.executors.ray.wire import ExecutorLostError
    from application.ports import FrameJob

    victim_front = _Front(_settings())
    executor = victim_front.executor
    try:
        data = jpeg(seed=5)
        executor.open_stream("doomed")
        executor.open_stream("bystander")
        assert [_run(victim_front, "counter", i, data, "doomed")["result"]["count"] for i in range(3)] == [1, 2, 3]
        assert _run(victim_front, "counter", 0, data, "bystander")["result"]["count"] == 1
        doomed_home = _actor_of(victim_front, "doomed")
        assert _actor_of(victim_front, "bystander") != doomed_home

        async def kill_during_frame() -> ExecutorLostError:
            work = asyncio.ensure_future(executor.run(FrameJob("hang", 3, data, "doomed"), timeout_s=20))
            await asyncio.sleep(0.4)
            ray.kill(actor(doomed_home))
            with pytest.raises(ExecutorLostError) as lost:
                await work
            return lost.value

        error = asyncio.run(kill_during_frame())
        assert error.code is ErrorCode.PIPELINE_FAILURE
        assert "was lost" in error.detail and "per-stream tool state starts over" in error.detail
        assert doomed_home in error.log_message and doomed_home not in error.detail
        # The stream goes on, on another actor, its state re-created; the other stream never noticed.
        assert _run(victim_front, "counter", 4, data, "doomed")["result"]["count"] == 1
        assert _actor_of(victim_front, "doomed") != doomed_home
        assert _run(victim_front, "counter", 1, data, "bystander")["result"]["count"] == 2
        # The dead actor's slot gets a replacement, which the health report shows.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = executor.health()
            if all(entry["state"] == "ready" for entry in health["actors"]):
                break
            time.sleep(0.1)
        assert health["cluster"] == "ok", health
        assert sorted(entry["lost"] for entry in health["actors"]) == [0, 1]
        assert doomed_home not in [entry["name"] for entry in health["actors"]]
    finally:
        executor.shutdown()


def test_an_actor_killed_while_idle_is_replaced_without_failing_a_frame(ray_cluster: str) -> None:
    import ray

    victim_front = _Front(_settings(FORGESYTE_STREAM_RAY_ACTORS="1"))
    executor = victim_front.executor
    try:
        [only] = executor.actor_names()
        ray.kill(actor(only))
        deadline = time.monotonic() + 30
        while executor.health()["actors"][0]["name"] == only and time.monotonic() < deadline:
            time.sleep(0.05)
        assert executor.health()["actors"][0]["lost"] == 1
        # The next frame waits for the replacement rather than failing on the dead actor.
        assert _run(victim_front, "fast", 0, jpeg())["frame_index"] == 0
    finally:
        executor.shutdown()


def test_an_unreachable_cluster_address_is_a_configuration_error_naming_the_variable(ray_cluster: str) -> None:
    from adapters.executors.ray.cluster import connect
    from adapters.executors.ray.wire import RayClusterUnreachable
    from adapters.settings import SettingsError
    from tests.support.server import free_port

    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(RayClusterUnreachable, match=rf"FORGESYTE_STREAM_RAY_ADDRESS='{address}': no Ray cluster answers") as refused:
        connect(_settings(FORGESYTE_STREAM_RAY_ADDRESS=address))
    assert isinstance(refused.value, SettingsError)  # the CLI's configuration error: exit status 2


def test_actors_the_cluster_cannot_place_stop_start_up_naming_the_variable(ray_cluster: str) -> None:
    from adapters.executors.ray.executor import RayFrameExecutor
    from adapters.executors.ray.wire import RayClusterUnreachable

    settings = _settings(FORGESYTE_STREAM_RAY_ACTOR_CPUS="64")
    container = Container(settings=settings)
    with pytest.raises(RayClusterUnreachable, match="FORGESYTE_STREAM_RAY_ACTORS=2: 2 of the actors were not placed"):
        RayFrameExecutor(settings, container.frame_service(), start_timeout_s=2.0, worker_service=worker_pipeline_service)
