"""Models generated from asyncapi.yaml; regenerate with `make models`, never edit by hand.

The same models as the server repository's contracts/generated/, copied into the package.

messages.py holds one pydantic model per message payload (FrameResultPayload,
FrameDroppedPayload, ...) and one root model per message (FrameResult, ...).
"""
