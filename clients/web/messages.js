// Generated from asyncapi.yaml by contracts/jsdoc_types.py; do not edit by hand.
// Regenerate with `make models` (python -m contracts.generate_models).
// source-sha256: 171754b95f51b6f11bac9b65952280960cc090d93ac40f32a3f2f8b8caaaaa2d
// @ts-check

/**
 * Position of the frame in the stream, counted from 0 in arrival order.
 * @typedef {number} FrameIndex
 */

/**
 * Only on the WebRTC results channel (never on the WebSocket), on results, dropped notices and pipeline_failure: the RTP timestamp (32 bits, 90 kHz clock) the sender gave the video frame this message answers, as it was on the wire, so that a client can match a result or a drop to the frame of its own video. frame_index still counts the frames the server decoded, from 0 in arrival order.
 * @typedef {number} RtpTimestamp
 */

/**
 * A human-readable explanation; never exception text or a stack trace.
 * @typedef {string} ErrorDetail
 */

/**
 * A duration in milliseconds, or null while it is not known yet.
 * @typedef {(number|null)} NullableMilliseconds
 */

/**
 * A bounding box in pixels of the frame the client sent, (x1, y1) top left and (x2, y2) bottom right, with x1 <= x2 and y1 <= y2.
 * @typedef {Object} Box
 * @property {number} x1
 * @property {number} y1
 * @property {number} x2
 * @property {number} y2
 */

/**
 * The one shape of every detection inside a pipeline result (faces, people, objects, motion regions, text lines, QR codes). Tools may add their own keys: `text` for text and QR readers, `area` (pixels) for motion regions.
 * @typedef {Object} Detection
 * @property {string} label
 * @property {number} confidence
 * @property {Box} box
 * @property {string} [text]
 * @property {number} [area]
 * @property {(number|null)} [tracker_id] Added by the tracking plugin's `track` node (pipelines `faces_tracked`, `people_counting`, `yolo_counting`): the id of the detection's track, stable over the stream's frames, dropped frames included, and never shared between streams; ids start at 1 in each stream. `null` while no confirmed track holds the detection (a detection below the tracker's activation confidence, or a new object on its first frame).
 * (Tools may add further keys.)
 */

/**
 * @typedef {Object} FrameResultPayload
 * @property {FrameIndex} frame_index
 * @property {RtpTimestamp} [rtp_timestamp]
 * @property {Object<string, *>} result The pipeline's output for the frame, JSON values only. Its keys are defined by the pipeline; detections inside it have the shape of #/components/schemas/Detection. Pipelines with tracking analytics add `line_counts` and `zone_counts`. Pipelines with gated nodes (docs/gating.md: `faces_gated`, `people_counting_gated`) add `carried` and `carried_frames`.
 */

/**
 * From a `tracking.line_count` node, in every result: for each line of the pipeline file (by its name), how many tracked objects crossed it in each direction since the stream began, each track counted at most once per direction. "in" is crossing to the left side of the line walking from its start to its end. Counts never decrease within a stream.
 * @typedef {Object<string, *>} LineCounts
 */

/**
 * From a `tracking.zone_count` node, in every result: for each zone of the pipeline file (by its name), `occupancy`, the tracked objects inside it on this frame, and `entered`, the distinct tracks seen inside it since the stream began (each track once).
 * @typedef {Object<string, *>} ZoneCounts
 */

/**
 * @typedef {Object} FrameDroppedPayload
 * @property {FrameIndex} frame_index
 * @property {RtpTimestamp} [rtp_timestamp]
 * @property {true} dropped
 * @property {("lagging"|"buffer_full"|"closing"|"shutdown")} cause lagging: the pipeline is slower than the client and a newer frame replaced this one. buffer_full: a burst outgrew the waiting buffer and the oldest waiting frame went. closing: the session is ending after an error before the frame could run. shutdown: the server is shutting down before the frame could run.
 */

/**
 * @typedef {Object} SlowDownWarningPayload
 * @property {"slow_down"} warning
 * @property {number} drop_rate Drops / frames received over the last 2000 ms.
 * @property {(number|null)} suggested_fps The frame rate the pipeline keeps up with, 1000 / (processing_ms × (1 + drop_threshold)); null while no frame has been processed.
 * @property {NullableMilliseconds} processing_ms
 * @property {NullableMilliseconds} interval_ms
 */

/**
 * @typedef {Object} InvalidMessageErrorPayload
 * @property {"invalid_message"} error
 * @property {ErrorDetail} detail
 * @property {FrameIndex} [frame_index]
 */

/**
 * @typedef {Object} InvalidFrameErrorPayload
 * @property {"invalid_frame"} error
 * @property {ErrorDetail} detail
 * @property {FrameIndex} [frame_index]
 */

/**
 * @typedef {Object} FrameTooLargeErrorPayload
 * @property {"frame_too_large"} error
 * @property {ErrorDetail} detail
 * @property {FrameIndex} [frame_index]
 */

/**
 * @typedef {Object} PipelineFailureErrorPayload
 * @property {"pipeline_failure"} error
 * @property {ErrorDetail} detail
 * @property {FrameIndex} frame_index
 * @property {RtpTimestamp} [rtp_timestamp]
 */

/**
 * @typedef {Object} InternalErrorPayload
 * @property {"internal_error"} error
 * @property {ErrorDetail} detail
 * @property {FrameIndex} [frame_index]
 */

/**
 * @typedef {Object} InvalidPipelineErrorPayload
 * @property {"invalid_pipeline"} error
 * @property {ErrorDetail} detail
 * @property {FrameIndex} [frame_index]
 */

/**
 * @typedef {Object} ServerBusyErrorPayload
 * @property {"server_busy"} error
 * @property {ErrorDetail} detail
 * @property {FrameIndex} [frame_index]
 */

/**
 * @typedef {Object} UnauthorizedErrorPayload
 * @property {"unauthorized"} error
 * @property {ErrorDetail} detail
 * @property {FrameIndex} [frame_index]
 */

/**
 * @typedef {Object} ShuttingDownErrorPayload
 * @property {"shutting_down"} error
 * @property {ErrorDetail} detail
 * @property {FrameIndex} [frame_index]
 */

/**
 * @typedef {Object} IdleTimeoutErrorPayload
 * @property {"idle_timeout"} error
 * @property {ErrorDetail} detail
 * @property {FrameIndex} [frame_index]
 */

/**
 * Any JSON message the server sends on the stream.
 * @typedef {FrameResultPayload|FrameDroppedPayload|SlowDownWarningPayload|InvalidMessageErrorPayload|InvalidFrameErrorPayload|FrameTooLargeErrorPayload|PipelineFailureErrorPayload|InternalErrorPayload|InvalidPipelineErrorPayload|ServerBusyErrorPayload|UnauthorizedErrorPayload|ShuttingDownErrorPayload|IdleTimeoutErrorPayload} ServerMessage
 */

/** Close codes of the stream and what each means. @type {Readonly<Record<number, string>>} */
export const CLOSE_CODES = Object.freeze({
  "1000": "normal closure; the client closed the stream",
  "1002": "protocol error; the client broke the WebSocket protocol (for example an unmasked frame); no error message",
  "1003": "invalid_message; the client sent a text message",
  "1007": "invalid_frame; a frame was not a complete JPEG image",
  "1008": "invalid_pipeline; pipeline_id missing, unknown or unavailable (or, with no error message first, the client sent a message in more than FORGESYTE_STREAM_WS_MAX_FRAGMENTS fragments or more than FORGESYTE_STREAM_WS_MAX_CONTROL_FRAMES_PER_S pings and pongs a second)",
  "1009": "frame_too_large; a frame exceeded FORGESYTE_STREAM_MAX_FRAME_BYTES (or, with no error message first, a message exceeded the WebSocket limit and was not read)",
  "1011": "internal_error; the server hit an unexpected error",
  "1012": "shutting_down; the server is shutting down, reconnect later (without the JSON error only for a client that stopped reading during shutdown)",
  "1013": "server_busy; FORGESYTE_STREAM_MAX_SESSIONS sessions are open, or the API key holds FORGESYTE_STREAM_MAX_SESSIONS_PER_KEY; retry later",
  "3000": "unauthorized; API keys are required and the handshake presented no valid one",
  "3008": "idle_timeout; no message arrived for FORGESYTE_STREAM_IDLE_TIMEOUT_S while no frame was in flight"
});

/** Each error code and the close code that follows it (null: the session stays open). @type {Readonly<Record<string, number|null>>} */
export const ERROR_CLOSE_CODES = Object.freeze({
  "invalid_message": 1003,
  "invalid_frame": 1007,
  "frame_too_large": 1009,
  "pipeline_failure": null,
  "internal_error": 1011,
  "invalid_pipeline": 1008,
  "server_busy": 1013,
  "unauthorized": 3000,
  "shutting_down": 1012,
  "idle_timeout": 3008
});

/** The causes a FrameDropped may carry. @type {ReadonlyArray<string>} */
export const DROP_CAUSES = Object.freeze(["lagging", "buffer_full", "closing", "shutdown"]);
