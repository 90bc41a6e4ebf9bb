// @ts-check
// The page's elements and what draws on them: the status line, the figures, and results over the video.

/** @typedef {import("./messages.js").Detection} Detection */
/** @typedef {import("./messages.js").FrameResultPayload} FrameResultPayload */

const BOX_COLOR = "#00e676";

/** @param {string} id */
export function $(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`page element #${id} is missing`);
  return element;
}

export const ui = {
  form: /** @type {HTMLFormElement} */ ($("controls")),
  pipeline: /** @type {HTMLSelectElement} */ ($("pipeline")),
  transport: /** @type {HTMLSelectElement} */ ($("transport")),
  source: /** @type {HTMLSelectElement} */ ($("source")),
  fileField: $("file-field"),
  file: /** @type {HTMLInputElement} */ ($("file")),
  qualityField: $("quality-field"),
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
export function setStatus(text, isError = false) {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

/** @returns {Record<string, string>} */
export function authHeaders() {
  const key = ui.key.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** Every detection-shaped object in a result, at any depth (faces, motion regions, text lines, QR codes).
 * @param {unknown} value @param {Detection[]} [found] @returns {Detection[]} */
export function detectionsIn(value, found = []) {
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

/** @param {string} id @param {string|number} text @param {number} [value] */
export function show(id, text, value) {
  const element = $(id);
  element.textContent = String(text);
  if (value !== undefined) element.dataset.value = String(value);
}


/** Draw a result's detections over the video (the overlay has the video's size). `picture`: the frame the result
 * answers, painted under the boxes (WebRTC with RTP matching); without it the boxes go over the live video.
 * `frameSize`: the size of the frames the server received, when it is not the video's (the boxes are in its pixels).
 * @param {FrameResultPayload} message @param {ImageBitmap|null} [picture] @param {{width: number, height: number}|null} [frameSize] */
export function draw(message, picture = null, frameSize = null) {
  const canvas = ui.overlay;
  const video = ui.video;
  if (canvas.width !== video.videoWidth || canvas.height !== video.videoHeight) {
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
  }
  const context = canvas.getContext("2d");
  if (!context) return;
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (picture) context.drawImage(picture, 0, 0, canvas.width, canvas.height);
  const scaleX = frameSize?.width ? canvas.width / frameSize.width : 1;
  const scaleY = frameSize?.height ? canvas.height / frameSize.height : 1;
  const lineWidth = Math.max(2, Math.round(canvas.width / 320));
  context.lineWidth = lineWidth;
  context.font = `${Math.max(12, Math.round(canvas.width / 50))}px system-ui, sans-serif`;
  context.textBaseline = "bottom";
  for (const detection of detectionsIn(message.result)) {
    const [x1, x2] = [detection.box.x1 * scaleX, detection.box.x2 * scaleX];
    const [y1, y2] = [detection.box.y1 * scaleY, detection.box.y2 * scaleY];
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
