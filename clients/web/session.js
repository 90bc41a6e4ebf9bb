// @ts-check
// What every streaming session shares, whatever carries its frames: the figures and the one handler of the
// server's messages (results, drops, slow_down, errors), the same over the WebSocket and the WebRTC channel.
import { draw, setStatus, show } from "./view.js";

/** @typedef {import("./messages.js").ServerMessage} ServerMessage */
/** @typedef {import("./messages.js").FrameResultPayload} FrameResultPayload */

export const RATE_WINDOW_MS = 2000;
const LATENCY_SAMPLES = 200;

/** @param {number[]} values @param {number} q */
function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.round(q * (sorted.length - 1)))];
}

/** What every session shares, whatever carries it: the figures and the one handler of the server's messages. */
export class Session {
  /** @param {string} pipeline @param {() => void} onStopped the page's part of stopping (buttons, camera) */
  constructor(pipeline, onStopped) {
    this.pipeline = pipeline;
    this.onStopped = onStopped;
    this.sent = 0;
    this.answered = 0;
    this.dropped = 0;
    this.failed = 0;
    /** @type {number|null} */
    this.suggestedFps = null;
    /** @type {number[]} */ this.sentTimes = [];
    /** @type {number[]} */ this.answerTimes = [];
    /** @type {number[]} */ this.latencies = [];
    this.running = true;
    this.startedAt = performance.now();
    /** @type {Record<string, any>|null} */ this.endingError = null;
    this.figures = setInterval(() => this.showFigures(), 250);
  }

  /** When the frame this message answers was sent (page clock), if known; the transport keeps track.
   * @param {ServerMessage & {frame_index: number}} message @returns {number|undefined} */
  sentAt(message) {
    return undefined;
  }

  /** Obey a slow_down warning: no faster than the server keeps up with (slower still while it cannot say).
   * @param {number|null} suggestedFps */
  slowDown(suggestedFps) {}

  /** @param {FrameResultPayload} message */
  drawResult(message) {
    draw(message);
  }

  /** @param {ServerMessage & {frame_index: number}} message */
  answer(message) {
    const sentAt = this.sentAt(message);
    const now = performance.now();
    this.answered += 1;
    this.answerTimes.push(now);
    return sentAt === undefined ? null : now - sentAt;
  }

  /** Every message from the server, over either transport. @param {ServerMessage} message */
  onMessage(message) {
    if ("result" in message) {
      const latency = this.answer(message);
      if (latency !== null) {
        this.latencies.push(latency);
        if (this.latencies.length > LATENCY_SAMPLES) this.latencies.shift();
      }
      this.drawResult(message);
    } else if ("dropped" in message) {
      this.answer(message);
      this.dropped += 1;
    } else if ("warning" in message) {
      this.suggestedFps = message.suggested_fps;
      this.slowDown(message.suggested_fps);
    } else if (message.error === "pipeline_failure") {
      if (message.frame_index !== undefined) this.answer(message);
      this.failed += 1;
      setStatus(`frame ${message.frame_index} failed: ${message.detail}`, true);
    } else {
      this.endingError = message; // the end of the stream follows
    }
  }

  /** The status line for an error that ended the stream. @param {Record<string, any>} error @param {string} how */
  static describe(error, how) {
    if (error.error === "unauthorized") return `unauthorized: the server refused the API key (${error.detail})`;
    return `${error.error}: ${error.detail} (${how})`;
  }

  /** Close the transport (the page stops the stream). */
  close() {}

  /** @param {boolean} [closeTransport] */
  stop(closeTransport = true) {
    if (!this.running) return;
    this.running = false;
    clearInterval(this.figures);
    this.showFigures();
    if (closeTransport) this.close();
    this.onStopped();
  }

  showFigures() {
    const now = performance.now();
    for (const times of [this.sentTimes, this.answerTimes]) {
      while (times.length && times[0] < now - RATE_WINDOW_MS) times.shift();
    }
    const spanS = Math.min(RATE_WINDOW_MS, now - this.startedAt) / 1000 || 1;
    show("sent", this.sent, this.sent);
    show("answered", this.answered, this.answered);
    show("sent-fps", (this.sentTimes.length / spanS).toFixed(1));
    show("answered-fps", (this.answerTimes.length / spanS).toFixed(1));
    const p50 = percentile(this.latencies, 0.5);
    const p95 = percentile(this.latencies, 0.95);
    show("p50", p50 === null ? "–" : `${p50.toFixed(0)} ms`);
    show("p95", p95 === null ? "–" : `${p95.toFixed(0)} ms`);
    show("dropped", this.dropped, this.dropped);
    show("failed", this.failed, this.failed);
    show("suggested", this.suggestedFps === null ? "–" : this.suggestedFps.toFixed(1));
  }
}

