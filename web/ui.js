/**
 * Page helpers shared by the dashboard, publish and watch pages: DOM building, formatting,
 * the live stream list (server-sent events with a polling fallback) and error messages.
 */

/** Valid stream names (same rule as the server). */
export const STREAM_NAME_RE = /^[A-Za-z0-9_-]{1,64}$/;

/**
 * querySelector shorthand that throws when the element is missing (a page bug).
 * @param {string} selector
 * @returns {HTMLElement}
 */
export function $(selector) {
  const el = document.querySelector(selector);
  if (!el) throw new Error(`missing element ${selector}`);
  return el;
}

/**
 * Create an element. Attributes starting with "on" become listeners; children may be strings.
 * @param {string} tag
 * @param {Record<string, any>} [attrs]
 * @param {...(Node|string|null|undefined|false)} children
 * @returns {HTMLElement}
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  el.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/**
 * The stream name of /publish/NAME and /watch/NAME pages.
 * @returns {string}
 */
export function streamNameFromPath() {
  const last = location.pathname.split("/").filter(Boolean).pop() || "";
  try { return decodeURIComponent(last); } catch { return last; }
}

/**
 * Set a status pill: its text, and `data-state` for the colour (see style.css).
 * @param {HTMLElement} el
 * @param {string} state e.g. live, offline, waiting, connecting, failed
 * @param {string} [text] defaults to the state
 */
export function setStatus(el, state, text = state) {
  el.dataset.state = state;
  el.textContent = text;
}

/**
 * Show or hide a message box.
 * @param {HTMLElement} el
 * @param {string} [text] empty hides the box
 * @param {"error"|"info"} [kind]
 */
export function showMessage(el, text = "", kind = "error") {
  el.dataset.kind = kind;
  el.textContent = text;
  el.hidden = !text;
}

/**
 * Keep `el` showing the viewer count of stream `name` (from the stream list).
 * @param {HTMLElement} el
 * @param {string} name
 * @returns {() => void} unsubscribe
 */
export function watchViewerCount(el, name) {
  return watchStreams((streams) => {
    const stream = streams.find((s) => s.name === name);
    el.textContent = stream ? String(stream.viewers ?? 0) : "0";
  });
}

/**
 * @param {number|null|undefined} bps bits per second
 * @returns {string} e.g. "1.23 Mbit/s", or "—"
 */
export function formatBitrate(bps) {
  if (bps === null || bps === undefined || !Number.isFinite(bps)) return "—";
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbit/s`;
  if (bps >= 1e3) return `${Math.round(bps / 1e3)} kbit/s`;
  return `${Math.round(bps)} bit/s`;
}

/**
 * @param {number|null|undefined} bytes
 * @returns {string} e.g. "1.2 MB", or "—"
 */
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) return "—";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return `${value.toFixed(unit && value < 10 ? 1 : 0)} ${units[unit]}`;
}

/**
 * @param {number|null|undefined} seconds
 * @returns {string} e.g. "1:02:03", "4:05", or "—"
 */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return "—";
  const s = Math.floor(seconds);
  const hh = Math.floor(s / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return hh ? `${hh}:${String(mm).padStart(2, "0")}:${ss}` : `${mm}:${ss}`;
}

/**
 * @param {number|null|undefined} width
 * @param {number|null|undefined} height
 * @returns {string} e.g. "640×480", or "—"
 */
export function formatResolution(width, height) {
  return width && height ? `${width}×${height}` : "—";
}

/**
 * @param {number|null|undefined} value
 * @param {number} [digits]
 * @param {string} [unit]
 * @returns {string} the number with `digits` decimals and a unit, or "—"
 */
export function formatNumber(value, digits = 0, unit = "") {
  return value === null || value === undefined || !Number.isFinite(value) ? "—" : `${value.toFixed(digits)}${unit}`;
}

/** The page's own `?token=`: a view token (or the operator's auth.metrics_token) unlocks streams in the list. */
const PAGE_TOKEN = new URLSearchParams(location.search).get("token") || "";

/**
 * @param {string} url
 * @returns {string} `url` with the page's `?token=` added, if it has one
 */
export function withToken(url) {
  return PAGE_TOKEN ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(PAGE_TOKEN)}` : url;
}

/**
 * Subscribe to the stream list: `GET /api/events` (event "streams"), falling back to polling
 * `GET /api/streams` every `pollInterval` ms while the event stream is down. Both list only the
 * streams the page's `?token=` may view (all streams without a view token).
 * @param {(streams: object[]) => void} onStreams called with the full list on every update
 * @param {{pollInterval?: number, onMode?: (mode: "events"|"polling"|"offline") => void}} [options]
 *   `onMode` reports how updates currently arrive ("offline": the last poll failed).
 * @returns {() => void} unsubscribe
 */
export function watchStreams(onStreams, { pollInterval = 5000, onMode } = {}) {
  let source = null;
  let pollTimer = 0;
  let reopenTimer = 0;
  let stopped = false;

  const poll = async () => {
    pollTimer = setTimeout(poll, pollInterval);
    try {
      const res = await fetch(withToken("api/streams"), { headers: { Accept: "application/json" } });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const body = await res.json();
      if (!stopped && pollTimer) { onStreams(body.streams || []); onMode?.("polling"); }
    } catch {
      if (!stopped && pollTimer) onMode?.("offline");
    }
  };
  const startPolling = () => { if (!pollTimer && !stopped) poll(); };
  const stopPolling = () => { clearTimeout(pollTimer); pollTimer = 0; };

  const open = () => {
    source = new EventSource(withToken("api/events"));
    source.addEventListener("streams", (ev) => {
      let body;
      try { body = JSON.parse(ev.data); } catch { return; }
      stopPolling();
      onStreams(body.streams || []);
      onMode?.("events");
    });
    source.addEventListener("error", () => {
      startPolling();
      // CLOSED means the browser gave up (HTTP error or wrong type): try again later ourselves.
      if (source.readyState === EventSource.CLOSED && !stopped) reopenTimer = setTimeout(open, 15000);
    });
  };

  if (typeof EventSource === "function") open(); else startPolling();
  return () => {
    stopped = true;
    source?.close();
    stopPolling();
    clearTimeout(reopenTimer);
  };
}

/**
 * A readable message for a failed publish/watch request.
 * @param {any} err RelayError, DOMException or anything thrown
 * @param {{role: "publish"|"watch", stream: string}} context
 * @returns {string}
 */
export function describeError(err, { role, stream }) {
  if (err?.name !== "RelayError") return err?.message || String(err);
  const denied = "Access denied: the token is missing or wrong. Enter the right token and try again.";
  const text = {
    0: "Server unreachable: check your network connection and that the Relay server is running.",
    401: denied,
    403: denied,
    404: `Not found: check the stream name “${stream}”.`,
    409: role === "publish"
      ? `Stream “${stream}” is already live: someone else is publishing to it. Stop that publisher or pick another name.`
      : `Stream “${stream}” is offline.`,
    503: "The server is busy. Try again in a moment.",
  }[err.status] || `The server answered ${err.status}${err.title ? ` ${err.title}` : ""}.`;
  return err.detail ? `${text} Server said: ${err.detail}` : text;
}
