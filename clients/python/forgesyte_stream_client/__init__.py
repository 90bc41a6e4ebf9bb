"""Python client for ForgeSyte Stream: typed messages generated from asyncapi.yaml, an async and a blocking client.

    from forgesyte_stream_client import StreamClient, run, open_source

    with StreamClient("ws://127.0.0.1:8000", "faces") as client:
        client.send(jpeg_bytes)
        print(client.receive())

    for outcome in run("ws://127.0.0.1:8000", "faces", open_source("video.mp4")):
        print(outcome.index, outcome.reply)
"""

from forgesyte_stream_client.blocking import StreamClient, run
from forgesyte_stream_client.client import Outcome, Pacing, Reconnect, Skipped, stream
from forgesyte_stream_client.session import AsyncStreamClient, stream_url
from forgesyte_stream_client.errors import (
    ClientError,
    ConnectError,
    ConnectionLost,
    InvalidPipelineError,
    ProtocolError,
    ReplyTimeout,
    ServerBusyError,
    ShuttingDownError,
    StreamError,
    UnauthorizedError,
)
from forgesyte_stream_client.replies import Detection, Dropped, FrameFailed, FrameInfo, Result, SlowDown
from forgesyte_stream_client.sources import Frame, Source, SourceError, encode_jpeg, open_source
from forgesyte_stream_client.webrtc import IceServer, WebRtcOptions

__all__ = [
    "AsyncStreamClient",
    "ClientError",
    "ConnectError",
    "ConnectionLost",
    "Detection",
    "Dropped",
    "Frame",
    "FrameFailed",
    "FrameInfo",
    "IceServer",
    "InvalidPipelineError",
    "Outcome",
    "Pacing",
    "ProtocolError",
    "Reconnect",
    "ReplyTimeout",
    "Result",
    "ServerBusyError",
    "ShuttingDownError",
    "Skipped",
    "SlowDown",
    "Source",
    "SourceError",
    "StreamClient",
    "StreamError",
    "UnauthorizedError",
    "WebRtcOptions",
    "encode_jpeg",
    "open_source",
    "run",
    "stream",
    "stream_url",
]
