// @ts-check
// The page's WebRTC parts: WHIP signalling (RFC 9725, no trickle ICE), the ICE servers of the answer's Link
// headers, and matching a result to the picture it answers by RTP timestamp.
//
// How a result finds its picture (where the browser can):
// - RTP timestamps of a camera track are its capture times on the 90 kHz clock plus a fixed random offset
//   (RTP = 90 * captureTime + offset). A pass-through sender transform (RTCRtpScriptTransform, rtp-worker.js)
//   reports each encoded frame's RTP timestamp and when it was encoded; the capture time is never later than
//   that, so the largest RTP/90 - encodedAt seen estimates the offset (within the encoder's shortest delay,
//   a few ms).
// - requestVideoFrameCallback reports each camera frame the <video> shows with its captureTime; the page keeps
//   a copy of the last ~2 s of them (ImageBitmaps).
// - A result's rtp_timestamp then names its picture: the held frame whose capture time is nearest the one
//   the timestamp stands for (within half a frame interval). The page paints that picture with the result's
//   boxes, so the boxes sit on the frame the server analysed (the view runs one round trip behind the camera).
// Without RTCRtpScriptTransform, without a captureTime in the video frame metadata (a video file, some
// browsers), or when the picture is no longer held, the newest result's boxes are drawn over the live video.

export const WEBRTC_SUPPORTED = typeof RTCPeerConnection === "function";
export const RTP_MATCHING_SUPPORTED =
  WEBRTC_SUPPORTED && typeof RTCRtpScriptTransform === "function" && "requestVideoFrameCallback" in HTMLVideoElement.prototype;

const GATHER_TIMEOUT_MS = 5000;
const RTP_TICKS_PER_MS = 90;
const HOLD_MS = 2000; // pictures and encoded frames are kept this long for their results
const MAX_HELD_PICTURES = 64;

/** ICE servers named by the last answer's Link headers: the next peer connection starts with them. @type {RTCIceServer[]} */
let linkedIceServers = [];

export function iceServers() {
  return linkedIceServers;
}

/** A refused WHIP POST: the HTTP status and the unified error body. */
export class WhipError extends Error {
  /** @param {number} status @param {string} code @param {string} detail */
  constructor(status, code, detail) {
    super(`${code}: ${detail}`);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

/** The `rel="ice-server"` links of a Link header (RFC 9725 section 4.6) as RTCIceServers; quoted values may hold
 * any character (`\"` and `\\` escaped, RFC 8288).
 * @param {string|null} header @returns {RTCIceServer[]} */
export function iceServersFromLink(header) {
  /** @type {RTCIceServer[]} */
  const servers = [];
  // One token at a time: <url>, a parameter (name, "=", a quoted string or a token), ";" or ",".
  const token = /\s*(?:<([^>]*)>|([\w-]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;,"]*)))?|(;)|(,))/y;
  /** @type {{url: string, params: Record<string, string>}|null} */
  let link = null;
  const finish = () => {
    if (!link || link.params.rel !== "ice-server") return;
    /** @type {RTCIceServer} */
    const server = { urls: link.url };
    if (link.params.username !== undefined) server.username = link.params.username;
    if (link.params.credential !== undefined) server.credential = link.params.credential;
    servers.push(server);
  };
  let match;
  while (header && token.lastIndex < header.length && (match = token.exec(header))) {
    const [, url, name, quoted, bare, , comma] = match;
    if (url !== undefined) link = { url, params: {} };
    else if (name !== undefined && link) link.params[name.toLowerCase()] = quoted === undefined ? (bare ?? "") : quoted.replace(/\\(.)/g, "$1");
    else if (comma !== undefined) {
      finish();
      link = null;
    }
  }
  finish();
  return servers;
}

/** Resolves once ICE gathering is complete (WHIP here is without trickle), or after GATHER_TIMEOUT_MS.
 * @param {RTCPeerConnection} pc */
export function gatheringComplete(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve(undefined);
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve(undefined);
      }
    });
  });
}

/** POST the complete offer; the answer's SDP and its session's URL, or a WhipError with the server's error body.
 * @param {string} pipeline @param {string} sdp @param {Record<string, string>} headers */
export async function publish(pipeline, sdp, headers) {
  const url = new URL(`/v1/whip?pipeline_id=${encodeURIComponent(pipeline)}`, location.href);
  const response = await fetch(url, { method: "POST", headers: { ...headers, "Content-Type": "application/sdp" }, body: sdp });
  if (response.status !== 201) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not the unified error body (a proxy's page, say): the status speaks
    }
    throw new WhipError(response.status, body?.error ?? "http_error", body?.detail ?? `POST /v1/whip answered ${response.status}`);
  }
  const found = iceServersFromLink(response.headers.get("Link"));
  if (found.length) linkedIceServers = found;
  const where = response.headers.get("Location");
  return { answer: await response.text(), session: where ? new URL(where, url).href : null, iceServers: found };
}

/** @param {number} a @param {number} b the difference a - b of two 32-bit RTP timestamps, across a wrap */
function rtpDelta(a, b) {
  const d = (a - b) % 2 ** 32;
  return d >= 2 ** 31 ? d - 2 ** 32 : d < -(2 ** 31) ? d + 2 ** 32 : d;
}

/** @typedef {{rtp: number, width: number, height: number, at: number}} EncodedFrame at: when it left the encoder (page clock, ms) */
/** @typedef {{captureTime: number, bitmap: ImageBitmap|null}} HeldPicture */

/** Matches results to frames by RTP timestamp (see the top of this file). */
export class FrameMatcher {
  /** @param {HTMLVideoElement} video @param {RTCRtpSender} sender @param {(frame: EncodedFrame) => void} onEncoded */
  constructor(video, sender, onEncoded) {
    this.video = video;
    this.active = true;
    /** @type {HeldPicture[]} */ this.pictures = [];
    /** @type {Map<number, EncodedFrame>} rtp -> frame, oldest first */ this.encoded = new Map();
    /** @type {number|null} */ this.lineRtp = null; // the newest RTP timestamp and the capture time it stands for
    this.lineAt = 0;
    this.worker = new Worker(new URL("./rtp-worker.js", import.meta.url));
    this.worker.onmessage = (event) => {
      const frame = /** @type {EncodedFrame} */ (event.data);
      frame.at -= performance.timeOrigin;
      this.learn(frame);
      onEncoded(frame);
    };
    sender.transform = new RTCRtpScriptTransform(this.worker, {});
    /** @type {VideoFrameRequestCallback} */
    const onPicture = (_, metadata) => {
      if (!this.active) return;
      if (metadata.captureTime !== undefined) this.hold(metadata.captureTime);
      this.callback = video.requestVideoFrameCallback(onPicture);
    };
    this.callback = video.requestVideoFrameCallback(onPicture);
  }

  /** @param {number} captureTime */
  hold(captureTime) {
    /** @type {HeldPicture} */
    const held = { captureTime, bitmap: null };
    this.pictures.push(held);
    createImageBitmap(this.video).then(
      (bitmap) => {
        if (this.active && this.pictures.includes(held)) held.bitmap = bitmap;
        else bitmap.close();
      },
      () => {},
    );
    while (this.pictures.length > MAX_HELD_PICTURES || this.pictures[0].captureTime < captureTime - HOLD_MS) {
      this.pictures.shift()?.bitmap?.close();
    }
  }

  /** @param {EncodedFrame} frame */
  learn(frame) {
    // The capture time of `frame.rtp` by the current line, lowered when this frame was encoded earlier than that.
    const byLine = this.lineRtp === null ? frame.at : this.lineAt + rtpDelta(frame.rtp, this.lineRtp) / RTP_TICKS_PER_MS;
    this.lineAt = Math.min(byLine, frame.at);
    this.lineRtp = frame.rtp;
    this.encoded.delete(frame.rtp);
    this.encoded.set(frame.rtp, frame);
    for (const [rtp, old] of this.encoded) {
      if (old.at >= frame.at - HOLD_MS) break;
      this.encoded.delete(rtp);
    }
  }

  /** The encoded frame with this RTP timestamp, if it is recent. @param {number} rtp */
  frame(rtp) {
    return this.encoded.get(rtp) ?? null;
  }

  /** The held picture of the frame with this RTP timestamp, or null when there is none (yet, or any more).
   * @param {number} rtp @returns {ImageBitmap|null} */
  picture(rtp) {
    if (this.lineRtp === null || this.pictures.length < 2) return null;
    const captureTime = this.lineAt + rtpDelta(rtp, this.lineRtp) / RTP_TICKS_PER_MS;
    let best = 0;
    for (let i = 1; i < this.pictures.length; i++) {
      if (Math.abs(this.pictures[i].captureTime - captureTime) < Math.abs(this.pictures[best].captureTime - captureTime)) best = i;
    }
    const neighbour = this.pictures[best === 0 ? 1 : best - 1];
    const halfInterval = Math.abs(this.pictures[best].captureTime - neighbour.captureTime) / 2;
    return Math.abs(this.pictures[best].captureTime - captureTime) < halfInterval ? this.pictures[best].bitmap : null;
  }

  dispose() {
    this.active = false;
    if (this.callback !== undefined) this.video.cancelVideoFrameCallback(this.callback);
    this.worker.terminate();
    for (const held of this.pictures) held.bitmap?.close();
    this.pictures = [];
    this.encoded.clear();
  }
}
