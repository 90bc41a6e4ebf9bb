// @ts-check
/// <reference lib="webworker" />
// The page's sender-side encoded transform (RTCRtpScriptTransform): it changes nothing. For each encoded video
// frame it tells the page the frame's RTP timestamp, its size and when it left the encoder (milliseconds on the
// shared clock, performance.timeOrigin + performance.now()), then passes the frame on untouched.

self.onrtctransform = (event) => {
  const { readable, writable } = event.transformer;
  readable
    .pipeThrough(
      new TransformStream({
        /** @param {RTCEncodedVideoFrame | RTCEncodedAudioFrame} frame @param {TransformStreamDefaultController} controller */
        transform(frame, controller) {
          const metadata = /** @type {RTCEncodedVideoFrameMetadata} */ (frame.getMetadata());
          self.postMessage({
            rtp: metadata.rtpTimestamp ?? frame.timestamp, // older Chromium: timestamp is the RTP timestamp
            width: metadata.width ?? 0,
            height: metadata.height ?? 0,
            at: performance.timeOrigin + performance.now(),
          });
          controller.enqueue(frame);
        },
      }),
    )
    .pipeTo(writable);
};
