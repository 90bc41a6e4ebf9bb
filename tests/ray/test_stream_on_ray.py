"""The stream cases of tests/stream, run again on a server whose pipelines run on Ray.

The case functions are the same objects as in tests/stream; only the `server`
fixture differs (tests/ray/conftest.py): a real server joined to the session's
Ray cluster. Cases that start servers of their own run once, in tests/stream.
"""

from __future__ import annotations

import inspect

from tests.stream import test_backpressure_e2e, test_stream_protocol

for _module in (test_stream_protocol, test_backpressure_e2e):
    for _name, _case in vars(_module).items():
        if _name.startswith("test_") and callable(_case) and "server" in inspect.signature(_case).parameters:
            globals()[_name] = _case
