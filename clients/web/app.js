// @ts-check
// The ForgeSyte Stream browser client: a camera or a video file streamed to the server, results drawn over it.
// Two transports: WebRTC (WHIP; webrtc.js) where the browser has RTCPeerConnection, else the WebSocket of JPEGs.
// No build step: these modules and messages.js (generated from asyncapi.yaml) are served as they are.
import { CLOSE_CODES } from "./messages.js";
import { watchStreams } from "./streams.js";
import { RATE_WINDOW_MS, Session } from "./session.js";
import { $, authHeaders, draw, setStatus, show, ui } from "./view.js";
import { FrameMatcher, RTP_MATCHING_SUPPORTED, WEBRTC_SUPPORTED, WhipError, gatheringComplete, iceServers, publish } from "./webrtc.js";

/** @typedef {import("./messages.js").ServerMessage} ServerMessage */
/** @typedef {import("./messages.js").FrameResultPayload} FrameResultPayload */
/** @typedef {import("./webrtc.js").EncodedFrame} EncodedFrame */

const SUBPROTOCOL_PREFIX = "forgesyte.bearer.";
const UNAUTHORIZED_CLOSE = 3000;

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
/** The WebSocket session: one JPEG in flight, the newest frame wins, at most the server's suggested rate. */
class WebSocketSession extends Session {
  /** @param {string} pipeline @param {string} key @param {number} quality */
  constructor(pipeline, key, quality) {
    super(pipeline, stopped);
    this.quality = quality;
    this.minIntervalMs = 0;
    this.lastSentAt = 0;
    /** @type {Map<number, number>} frame_index -> send time */
    this.inFlight = new Map();
    this.encoding = false;
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
    show("overlay-mode", "newest result", 0);
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

  /** @param {ServerMessage & {frame_index: number}} message */
  sentAt(message) {
    const sentAt = this.inFlight.get(message.frame_index);
    this.inFlight.delete(message.frame_index);
    return sentAt;
  }

  /** @param {number|null} suggestedFps */
  slowDown(suggestedFps) {
    // Halve the rate while the server cannot say yet, to at most 10 frames a second.
    this.minIntervalMs = suggestedFps ? 1000 / suggestedFps : Math.max(100, this.minIntervalMs * 2);
  }

  /** @param {number} code @param {string} reason */
  onClose(code, reason) {
    const wasRunning = this.running;
    this.stop(false);
    if (code === 1000 && !this.endingError && !wasRunning) return;
    if (code === UNAUTHORIZED_CLOSE && !this.endingError) {
      setStatus("unauthorized: the server refused the API key", true);
    } else if (this.endingError) {
      setStatus(Session.describe(this.endingError, `close ${code}`), true);
    } else if (code === 1000) {
      setStatus("the server closed the stream");
    } else {
      const meaning = CLOSE_CODES[code] ?? (code === 1006 ? "the connection failed or was lost" : "unexpected close");
      setStatus(`closed with ${code}: ${reason || meaning}`, true);
    }
  }

  close() {
    if (this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000);
  }
}

/** The WebRTC session: the camera's track sent as video (WHIP), results on the `results` data channel. */
class WebRtcSession extends Session {
  /** @param {string} pipeline @param {MediaStreamTrack} track @param {Record<string, string>} headers */
  constructor(pipeline, track, headers) {
    super(pipeline, stopped);
    this.headers = headers;
    /** @type {string|null} the WHIP session's URL, DELETEd on stop */
    this.session = null;
    /** @type {{width: number, height: number}|null} the size of the frames the encoder sends */
    this.frameSize = null;
    this.matched = 0;
    this.pc = new RTCPeerConnection({ iceServers: iceServers() });
    // The channel is the client's, created before the offer, so the offer carries its m=application section.
    this.channel = this.pc.createDataChannel("results", { ordered: true });
    this.channel.onopen = () => setStatus(`streaming to ${pipeline}`);
    this.channel.onmessage = (event) => this.onMessage(JSON.parse(event.data));
    this.channel.onclose = () => this.ended("the server closed the stream");
    this.pc.onconnectionstatechange = () => {
      if (this.pc.connectionState === "failed") this.ended("the WebRTC connection failed or was lost");
    };
    this.sender = this.pc.addTransceiver(track, { direction: "sendonly" }).sender;
    /** @type {FrameMatcher|null} */
    this.matcher = RTP_MATCHING_SUPPORTED ? new FrameMatcher(ui.video, this.sender, (frame) => this.encodedFrame(frame)) : null;
    show("overlay-mode", "–", 0);
    this.negotiate().catch((error) => this.refused(error));
  }

  async negotiate() {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    await gatheringComplete(this.pc);
    const offer = this.pc.localDescription;
    if (!offer || !this.running) return;
    const { answer, session, iceServers: linked } = await publish(this.pipeline, offer.sdp, this.headers);
    this.session = session;
    if (!this.running) {
      this.close();
      return;
    }
    if (linked.length) {
      // Gathering is over (no trickle): the server's ICE servers serve an ICE restart and the page's next session.
      try {
        this.pc.setConfiguration({ ...this.pc.getConfiguration(), iceServers: linked });
      } catch {
        // a browser that refuses to change them mid-session: the next session starts with them
      }
    }
    await this.pc.setRemoteDescription({ type: "answer", sdp: answer });
    const parameters = this.sender.getParameters();
    // Drop frames rather than shrink them when the encoder is short of CPU: boxes stay in the camera's pixels.
    /** @type {any} */ (parameters).degradationPreference = "maintain-resolution";
    await this.sender.setParameters(parameters).catch(() => {});
  }

  /** @param {unknown} error */
  refused(error) {
    if (!this.running) return;
    this.stop();
    if (error instanceof WhipError) {
      const text = Session.describe({ error: error.code, detail: error.detail }, `HTTP ${error.status}`);
      setStatus(error.code === "unauthorized" ? `${text} (HTTP ${error.status})` : text, true);
    } else setStatus(`cannot start WebRTC: ${error instanceof Error ? error.message : error}`, true);
  }

  /** @param {EncodedFrame} frame */
  encodedFrame(frame) {
    this.sent += 1;
    this.sentTimes.push(frame.at);
    this.frameSize = { width: frame.width, height: frame.height };
  }

  /** @param {ServerMessage & {frame_index: number}} message */
  sentAt(message) {
    const rtp = "rtp_timestamp" in message ? message.rtp_timestamp : undefined;
    return rtp === undefined ? undefined : this.matcher?.frame(rtp)?.at;
  }

  /** @param {FrameResultPayload} message */
  drawResult(message) {
    const rtp = message.rtp_timestamp;
    const picture = rtp === undefined ? null : (this.matcher?.picture(rtp) ?? null);
    const frame = rtp === undefined ? null : (this.matcher?.frame(rtp) ?? null);
    if (picture) this.matched += 1;
    show("overlay-mode", picture ? "RTP timestamp" : "newest result", this.matched);
    draw(message, picture, frame ?? this.frameSize);
  }

  /** @param {number|null} suggestedFps */
  slowDown(suggestedFps) {
    const parameters = this.sender.getParameters();
    const encoding = parameters.encodings?.[0];
    if (!encoding) return;
    const current = encoding.maxFramerate ?? (this.sentTimes.length / (RATE_WINDOW_MS / 1000) || 30);
    encoding.maxFramerate = suggestedFps ?? Math.max(1, Math.min(10, current / 2));
    this.sender.setParameters(parameters).catch(() => {});
  }

  /** The stream ended without the page: the channel closed or the connection failed. @param {string} why */
  ended(why) {
    if (!this.running) return;
    this.stop(false);
    this.session = null; // the server has ended it: nothing to DELETE
    this.close();
    if (this.endingError) setStatus(Session.describe(this.endingError, "WebRTC"), true);
    else setStatus(why, why !== "the server closed the stream");
  }

  close() {
    this.channel.onclose = null;
    this.pc.onconnectionstatechange = null;
    const session = this.session;
    this.session = null;
    const closePeer = () => {
      this.matcher?.dispose();
      this.pc.close();
    };
    if (!session) return closePeer();
    // DELETE first, then close: the server ends the session on the DELETE, not on a vanished peer.
    fetch(session, { method: "DELETE", headers: this.headers, keepalive: true })
      .catch(() => {})
      .finally(closePeer);
  }

  showFigures() {
    super.showFigures();
    if (!this.matcher && this.running) this.countSent();
  }

  /** Without the encoded-frame transform, frames sent come from the sender's statistics. */
  async countSent() {
    const stats = await this.sender.getStats();
    stats.forEach((report) => {
      if (report.type === "outbound-rtp" && typeof report.framesSent === "number" && report.framesSent > this.sent) {
        const now = performance.now();
        for (let i = this.sent; i < report.framesSent; i++) this.sentTimes.push(now);
        this.sent = report.framesSent;
      }
    });
  }
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
  setStatus("connecting…");
  if (ui.transport.value === "webrtc") {
    const stream = cameraStream ?? captureStream(ui.video);
    const track = stream?.getVideoTracks()[0];
    if (!track) {
      stopped();
      setStatus("this browser cannot send a video file over WebRTC; choose the WebSocket transport", true);
      return;
    }
    session = new WebRtcSession(pipeline, track, authHeaders());
  } else {
    const quality = Math.min(1, Math.max(0.1, Number(ui.quality.value) || 0.8));
    session = new WebSocketSession(pipeline, ui.key.value.trim(), quality);
  }
}

/** The playing file as a MediaStream (HTMLMediaElement.captureStream), where the browser has it.
 * @param {HTMLVideoElement} video @returns {MediaStream|null} */
function captureStream(video) {
  const element = /** @type {{captureStream?: () => MediaStream, mozCaptureStream?: () => MediaStream}} */ (/** @type {unknown} */ (video));
  const capture = element.captureStream ?? element.mozCaptureStream;
  return capture ? capture.call(video) : null;
}

/** The transport choice: WebRTC by default where the browser has it, else the WebSocket. @param {string|null} wanted */
function chooseTransport(wanted) {
  const webrtc = /** @type {HTMLOptionElement} */ (ui.transport.querySelector('option[value="webrtc"]'));
  webrtc.disabled = !WEBRTC_SUPPORTED;
  if (wanted === "webrtc" || wanted === "websocket") ui.transport.value = wanted;
  if (!WEBRTC_SUPPORTED) ui.transport.value = "websocket";
  const showQuality = () => {
    ui.qualityField.hidden = ui.transport.value !== "websocket"; // WebRTC sends the encoder's video, not JPEGs
  };
  showQuality();
  ui.transport.addEventListener("change", showQuality);
}

async function main() {
  const params = new URLSearchParams(location.search);
  const key = params.get("key");
  if (key) {
    ui.key.value = key;
    params.delete("key"); // keep the key out of the address bar and the history
    history.replaceState(null, "", `${location.pathname}${params.size ? `?${params}` : ""}`);
  }
  chooseTransport(params.get("transport"));
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
  addEventListener("pagehide", () => session?.stop()); // a WebRTC session is DELETEd (keepalive) as the page goes
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
