// @ts-check
// The operator's view: the server's open streams (GET /v1/streams), a table refreshed every few seconds.

const REFRESH_MS = 2000;

/**
 * @typedef {{p50_ms: number, p95_ms: number, samples: number}} Percentiles
 * @typedef {{node_id: string, duration: Percentiles}} NodeStats
 * @typedef {{session_id: string, pipeline_id: string, transport: string, age_s: number, remote_address: string,
 *   key_name: string, frames_received: number, frames_answered: number, frames_failed: number,
 *   frames_dropped: Record<string, number>, fps_in: number, fps_out: number, latency: Percentiles|null,
 *   nodes: NodeStats[]}} LiveStream
 */

/** @param {Percentiles|null} p @param {"p50_ms"|"p95_ms"} key */
function ms(p, key) {
  return p ? `${p[key].toFixed(1)} ms` : "–";
}

/** @param {LiveStream} stream @returns {string[]} */
export function rowCells(stream) {
  const dropped = Object.entries(stream.frames_dropped)
    .filter(([, count]) => count > 0)
    .map(([cause, count]) => `${count} ${cause}`);
  const slowest = [...stream.nodes].sort((a, b) => b.duration.p95_ms - a.duration.p95_ms)[0];
  return [
    stream.session_id.slice(0, 8),
    stream.pipeline_id,
    stream.transport,
    stream.key_name,
    stream.remote_address,
    stream.age_s.toFixed(0),
    String(stream.frames_received),
    String(stream.frames_answered),
    dropped.length ? dropped.join(", ") : "0",
    String(stream.frames_failed),
    stream.fps_in.toFixed(1),
    stream.fps_out.toFixed(1),
    ms(stream.latency, "p50_ms"),
    ms(stream.latency, "p95_ms"),
    slowest ? `${slowest.node_id} ${ms(slowest.duration, "p95_ms")}` : "–",
  ];
}

/**
 * Refresh `body` (a table body) from GET /v1/streams every REFRESH_MS, and say in `note` when the last refresh was.
 * @param {HTMLTableSectionElement} body @param {HTMLElement} note @param {() => Record<string, string>} headers
 */
export function watchStreams(body, note, headers) {
  async function refresh() {
    try {
      const response = await fetch("/v1/streams", { headers: headers() });
      if (!response.ok) throw new Error(`GET /v1/streams answered ${response.status}`);
      /** @type {LiveStream[]} */
      const streams = await response.json();
      body.replaceChildren(
        ...streams.map((stream) => {
          const row = document.createElement("tr");
          row.dataset.session = stream.session_id;
          for (const text of rowCells(stream)) {
            const cell = document.createElement("td");
            cell.textContent = text;
            row.append(cell);
          }
          return row;
        }),
      );
      note.textContent = `${streams.length} open · updated ${new Date().toLocaleTimeString()}`;
      note.classList.remove("error");
    } catch (error) {
      note.textContent = `cannot list streams: ${error instanceof Error ? error.message : error}`;
      note.classList.add("error");
    }
  }
  refresh();
  return setInterval(refresh, REFRESH_MS);
}
