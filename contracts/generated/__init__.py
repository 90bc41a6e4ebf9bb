"""Models generated from asyncapi.yaml; regenerate with `make models`, never edit by hand.

messages.py holds one pydantic model per message payload (FrameResultPayload,
FrameDroppedPayload, ...) and one root model per message (FrameResult, ...).
"""
