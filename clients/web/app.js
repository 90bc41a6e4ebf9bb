// @ts-check
// The ForgeSyte Stream browser client: a camera or a video file streamed to the server, results drawn over it.
// No build step: this module and messages.js (generated from asyncapi.yaml) are served as they are.
import { CLOSE_CODES } from "./messages.js";
import { watchStreams } from "./streams.js";

/** @typedef {import("./messages.js").ServerMessage} ServerMessage */
/** @typedef {import("./messages.js").Detection} Detection */
/** @typedef {import("./messages.js").FrameResultPayload} FrameResultPayload */

const SUBPROTOCOL_PREFIX = "forgesyte.bearer.";
const UNAUTHORIZED_CLOSE = 3000;
const RATE_WINDOW_MS = 2000;
const LATENCY_SAMPLES = 200;
const BOX_COLOR = "#00e676";

/** @param {string} id */
function $(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`page element #${id} is missing`);
  return element;
}

const ui = {
  form: /** @type {HTMLFormElement} */ ($("controls")),
  pipeline: /** @type {HTMLSelectElement} */ ($("pipeline")),
  source: /** @type {HTMLSelectElement} */ ($("source")),
  fileField: $("file-field"),
  file: /** @type {HTMLInputElement} */ ($("file")),
  quality: /** @type {HTMLInputElement} */ ($("quality")),
  key: /** @type {HTMLInputElement} */ ($("key")),
  start: /** @type {HTMLButtonElement} */ ($("start")),
  stop: /** @type {HTMLButtonElement} */ ($("stop")),
  status: $("status"),
  video: /** @type {HTMLVideoElement} */ ($("video")),
  overlay: /** @type {HTMLCanvasElement} */ ($("overlay")),
  lastResult: $("last-result"),
};

/** @param {string} text @param {boolean} [isError] */
function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

/** @returns {Record<string, string>} */
function authHeaders() {
  const key = ui.key.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** Fill the pipeline list with the available pipelines; returns their ids. */
async function loadPipelines() {
  const response = await fetch("/v1/pipelines", { headers: authHeaders() });
  if (!response.ok) throw new Error(`GET /v1/pipelines answered ${response.status}`);
  /** @type {Array<{id: string, name: string, available: boolean, reason: string|null}>} */
  const pipelines = await response.json();
  ui.pipeline.replaceChildren();
  const available = pipelines.filter((p) => p.available);
  for (const p of available) {
    ui.pipeline.append(new Option(`${p.id} — ${p.name}`, p.id));
  }
  return available.map((p) => p.id);
}

/** Every detection-shaped object in a result, at any depth (faces, motion regions, text lines, QR codes).
 * @param {unknown} value @param {Detection[]} [found] @returns {Detection[]} */
function detectionsIn(value, found = []) {
  if (Array.isArray(value)) {
    for (const item of value) detectionsIn(item, found);
  } else if (value && typeof value === "object") {
    const candidate = /** @type {Record<string, any>} */ (value);
    if ("box" in candidate && "label" in candidate && "confidence" in candidate) {
      found.push(/** @type {Detection} */ (candidate));
    } else {
      for (const item of Object.values(candidate)) detectionsIn(item, found);
    }
  }
  return found;
}

/** @param {number[]} values @param {number} q */
function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.round(q * (sorted.length - 1)))];
}

/** One streaming session: one frame in flight, the newest frame wins, at most the server's suggested rate. */
class Session {
  /** @param {string} pipeline @param {string} key @param {number} quality */
  constructor(pipeline, key, quality) {
    this.quality = quality;
    this.sent = 0;
    this.answered = 0;
    this.dropped = 0;
    this.failed = 0;
    /** @type {number|null} */
    this.suggestedFps = null;
    this.minIntervalMs = 0;
    this.lastSentAt = 0;
    /** @type {Map<number, number>} frame_index -> send time */
    this.inFlight = new Map();
    /** @type {number[]} */ this.sentTimes = [];
    /** @type {number[]} */ this.answerTimes = [];
    /** @type {number[]} */ this.latencies = [];
    this.encoding = false;
    this.running = true;
    this.startedAt = performance.now();
    /** @type {Record<string, any>|null} */ this.endingError = null;
    this.capture = document.createElement("canvas");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/ws/video/stream?pipeline_id=${encodeURIComponent(pipeline)}`;
    this.socket = key ? new WebSocket(url, [SUBPROTOCOL_PREFIX + key]) : new WebSocket(url);
    this.socket.onopen = () => {
      setStatus(`streaming to ${pipeline}`);
      this.pump();
    };
    this.socket.onmessage = (event) => this.onMessage(JSON.parse(event.data));
    this.socket.onclose = (event) => this.onClose(event.code, event.reason);
    this.figures = setInterval(() => this.showFigures(), 250);
  }

  pump() {
    if (!this.running || this.socket.readyState !== WebSocket.OPEN) return;
    const now = performance.now();
    const video = ui.video;
    if (!this.encoding && this.inFlight.size === 0 && now - this.lastSentAt >= this.minIntervalMs && video.readyState >= 2 && video.videoWidth) {
      this.encoding = true;
      this.capture.width = video.videoWidth;
      this.capture.height = video.videoHeight;
      const context = this.capture.getContext("2d");
      if (context) context.drawImage(video, 0, 0);
      this.capture.toBlob((blob) => {
        this.encoding = false;
        if (!blob || !this.running || this.socket.readyState !== WebSocket.OPEN) return;
        const sentAt = performance.now();
        this.inFlight.set(this.sent, sentAt);
        this.sent += 1;
        this.lastSentAt = sentAt;
        this.sentTimes.push(sentAt);
        this.socket.send(blob); // one binary message holding one JPEG
      }, "image/jpeg", this.quality);
    }
    requestAnimationFrame(() => this.pump());
  }

  /** @param {number} frameIndex */
  answer(frameIndex) {
    const sentAt = this.inFlight.get(frameIndex);
    this.inFlight.delete(frameIndex);
    const now = performance.now();
    this.answered += 1;
    this.answerTimes.push(now);
    return sentAt === undefined ? null : now - sentAt;
  }

  /** @param {ServerMessage} message */
  onMessage(message) {
    if ("result" in message) {
      const latency = this.answer(message.frame_index);
      if (latency !== null) {
        this.latencies.push(latency);
        if (this.latencies.length > LATENCY_SAMPLES) this.latencies.shift();
      }
      draw(message);
    } else if ("dropped" in message) {
      this.answer(message.frame_index);
      this.dropped += 1;
    } else if ("warning" in message) {
      this.suggestedFps = message.suggested_fps;
      // Obey the server: no faster than it keeps up with (halve the rate while it cannot say yet).
      this.minIntervalMs = message.suggested_fps ? 1000 / message.suggested_fps : Math.max(100, this.minIntervalMs * 2);
    } else if (message.error === "pipeline_failure") {
      if (message.frame_index !== undefined) this.answer(message.frame_index);
      this.failed += 1;
      setStatus(`frame ${message.frame_index} failed: ${message.detail}`, true);
    } else {
      this.endingError = message; // the close follows
    }
  }

  /** @param {number} code @param {string} reason */
  onClose(code, reason) {
    const wasRunning = this.running;
    this.stop(false);
    if (code === 1000 && !this.endingError && !wasRunning) return;
    if (code === UNAUTHORIZED_CLOSE || this.endingError?.error === "unauthorized") {
      setStatus(`unauthorized: the server refused the API key${this.endingError ? ` (${this.endingError.detail})` : ""}`, true);
    } else if (this.endingError) {
      setStatus(`${this.endingError.error}: ${this.endingError.detail} (close ${code})`, true);
    } else if (code === 1000) {
      setStatus("the server closed the stream");
    } else {
      const meaning = CLOSE_CODES[code] ?? (code === 1006 ? "the connection failed or was lost" : "unexpected close");
      setStatus(`closed with ${code}: ${reason || meaning}`, true);
    }
  }

  /** @param {boolean} [closeSocket] */
  stop(closeSocket = true) {
    if (!this.running) return;
    this.running = false;
    clearInterval(this.figures);
    this.showFigures();
    if (closeSocket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000);
    stopped();
  }

  showFigures() {
    const now = performance.now();
    for (const times of [this.sentTimes, this.answerTimes]) {
      while (times.length && times[0] < now - RATE_WINDOW_MS) times.shift();
    }
    /** @param {string} id @param {string|number} text @param {number} [value] */
    const show = (id, text, value) => {
      const element = $(id);
      element.textContent = String(text);
      if (value !== undefined) element.dataset.value = String(value);
    };
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

/** Draw a result's detections over the video, in the frame's own pixels (the overlay has the video's size).
 * @param {FrameResultPayload} message */
function draw(message) {
  const canvas = ui.overlay;
  const video = ui.video;
  if (canvas.width !== video.videoWidth || canvas.height !== video.videoHeight) {
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
  }
  const context = canvas.getContext("2d");
  if (!context) return;
  context.clearRect(0, 0, canvas.width, canvas.height);
  const lineWidth = Math.max(2, Math.round(canvas.width / 320));
  context.lineWidth = lineWidth;
  context.font = `${Math.max(12, Math.round(canvas.width / 50))}px system-ui, sans-serif`;
  context.textBaseline = "bottom";
  for (const detection of detectionsIn(message.result)) {
    const { x1, y1, x2, y2 } = detection.box;
    context.strokeStyle = BOX_COLOR;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const label = `${detection.label} ${detection.confidence.toFixed(2)}${detection.text ? `: ${detection.text}` : ""}`;
    const width = context.measureText(label).width + 8;
    const height = parseInt(context.font, 10) + 6;
    const top = y1 - height >= 0 ? y1 - height : y2;
    context.fillStyle = BOX_COLOR;
    context.fillRect(x1 - lineWidth / 2, top, width, height);
    context.fillStyle = "#000";
    context.fillText(label, x1 + 4, top + height - 3);
  }
  ui.lastResult.textContent = JSON.stringify(message.result, null, 1);
}

/** @type {Session|null} */
let session = null;
/** @type {MediaStream|null} */
let cameraStream = null;

function stopped() {
  ui.start.disabled = false;
  ui.stop.disabled = true;
  if (cameraStream) {
    for (const track of cameraStream.getTracks()) track.stop();
    cameraStream = null;
  }
  ui.video.pause();
}

async function start() {
  if (session?.running) return;
  const pipeline = ui.pipeline.value;
  if (!pipeline) {
    setStatus("no available pipeline to stream to", true);
    return;
  }
  ui.start.disabled = true;
  try {
    if (ui.source.value === "camera") {
      cameraStream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
      ui.video.srcObject = cameraStream;
    } else {
      const file = ui.file.files?.[0];
      if (!file) throw new Error("choose a video file first");
      ui.video.srcObject = null;
      ui.video.src = URL.createObjectURL(file);
      ui.video.loop = true;
    }
    await ui.video.play();
  } catch (error) {
    ui.start.disabled = false;
    setStatus(`cannot open the source: ${error instanceof Error ? error.message : error}`, true);
    return;
  }
  ui.stop.disabled = false;
  const quality = Math.min(1, Math.max(0.1, Number(ui.quality.value) || 0.8));
  setStatus("connecting…");
  session = new Session(pipeline, ui.key.value.trim(), quality);
}

async function main() {
  const params = new URLSearchParams(location.search);
  const key = params.get("key");
  if (key) {
    ui.key.value = key;
    params.delete("key"); // keep the key out of the address bar and the history
    history.replaceState(null, "", `${location.pathname}${params.size ? `?${params}` : ""}`);
  }
  const source = params.get("source");
  if (source === "camera" || source === "file") ui.source.value = source;
  ui.fileField.hidden = ui.source.value !== "file";
  ui.source.addEventListener("change", () => {
    ui.fileField.hidden = ui.source.value !== "file";
  });
  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  ui.stop.addEventListener("click", () => {
    session?.stop();
    setStatus("stopped");
  });
  watchStreams(
    /** @type {HTMLTableSectionElement} */ (/** @type {HTMLTableElement} */ ($("streams")).tBodies[0]),
    $("streams-note"),
    authHeaders,
  );
  let ids;
  try {
    ids = await loadPipelines();
  } catch (error) {
    setStatus(`cannot list pipelines: ${error instanceof Error ? error.message : error}`, true);
    return;
  }
  const wanted = params.get("pipeline");
  if (wanted && !ids.includes(wanted)) {
    setStatus(`pipeline '${wanted}' is unknown or unavailable; choose one of ${ids.join(", ")}`, true);
    return;
  }
  if (wanted) ui.pipeline.value = wanted;
  setStatus(ids.length ? "ready" : "the server has no available pipeline", !ids.length);
  if (params.get("autostart") === "1" && ids.length) await start();
}

main();
