/**
 * Dashboard (/): the stream list, live-refreshed, and a form to start publishing.
 * Each section is mounted by its own function; add a section by writing another `mountX()`
 * and calling it from main().
 */
import {
  $, h, setStatus, watchStreams, formatBitrate, formatDuration, formatResolution, STREAM_NAME_RE,
} from "/static/ui.js";

const UPDATE_MODES = { events: "live updates", polling: "polling", offline: "server unreachable" };

/**
 * Stream table: one row per stream, updated in place (keeps focus and scroll position).
 * @param {{onMode: (mode: string) => void}} options
 */
function mountStreamsSection({ onMode }) {
  const tbody = $("#streams");
  const empty = $("#streams-empty");
  const count = $("#stream-count");
  /** @type {Map<string, {row: HTMLTableRowElement, cells: Record<string, HTMLElement>, stream: object}>} */
  const rows = new Map();
  let receivedAt = performance.now();

  const uptime = (s) => (s.live ? formatDuration((s.uptime_s ?? 0) + (performance.now() - receivedAt) / 1000) : "—");

  const createRow = (name) => {
    const cell = (label, cls = null) => h("td", { "data-label": label, class: cls });
    const cells = {
      name: h("td", { class: "name" }, h("a", { href: `/watch/${encodeURIComponent(name)}` }, name)),
      state: cell("State"),
      viewers: cell("Viewers", "num"),
      video: cell("Video"),
      audio: cell("Audio"),
      bitrate: cell("Bitrate in", "num"),
      uptime: cell("Uptime", "num"),
      recording: cell("Recording"),
      actions: h("td", { class: "actions-cell" }, h("div", { class: "actions" },
        h("a", { class: "btn btn-small btn-primary", href: `/watch/${encodeURIComponent(name)}` }, "Watch"),
        h("a", { class: "btn btn-small", href: `/publish/${encodeURIComponent(name)}` }, "Publish"))),
    };
    cells.state.append(h("span", { class: "pill" }));
    const row = h("tr", { "data-stream": name }, ...Object.values(cells));
    return { row, cells, stream: null };
  };

  const fill = ({ row, cells }, s) => {
    row.dataset.live = String(Boolean(s.live));
    setStatus(cells.state.firstChild, s.live ? "live" : "offline");
    cells.viewers.textContent = String(s.viewers ?? 0);
    cells.video.textContent = s.video
      ? `${s.video.codec} · ${formatResolution(s.video.width, s.video.height)}` : "—";
    cells.audio.textContent = s.audio ? s.audio.codec : "—";
    cells.bitrate.textContent = s.live ? formatBitrate(s.bitrate_in) : "—";
    cells.uptime.textContent = uptime(s);
    cells.recording.replaceChildren(s.recording ? h("span", { class: "pill", "data-state": "recording" }, "REC") : "—");
  };

  const update = (streams) => {
    receivedAt = performance.now();
    const sorted = [...streams].sort((a, b) => Number(b.live) - Number(a.live) || a.name.localeCompare(b.name));
    const seen = new Set();
    sorted.forEach((s, i) => {
      seen.add(s.name);
      let entry = rows.get(s.name);
      if (!entry) rows.set(s.name, (entry = createRow(s.name)));
      entry.stream = s;
      fill(entry, s);
      if (tbody.children[i] !== entry.row) tbody.insertBefore(entry.row, tbody.children[i] || null);
    });
    for (const [name, entry] of rows) {
      if (!seen.has(name)) { entry.row.remove(); rows.delete(name); }
    }
    const live = sorted.filter((s) => s.live).length;
    empty.hidden = sorted.length > 0;
    count.textContent = sorted.length ? `${live} live · ${sorted.length} total` : "";
  };

  setInterval(() => {
    for (const entry of rows.values()) entry.cells.uptime.textContent = uptime(entry.stream);
  }, 1000);
  watchStreams(update, { onMode });
}

/** "Go live" form: validates the name and opens /publish/NAME. */
function mountPublishForm() {
  const form = $("#new-stream");
  const input = $("#new-name");
  const error = $("#name-error");
  const validate = () => {
    const name = input.value.trim();
    const message = !name ? "Enter a stream name."
      : STREAM_NAME_RE.test(name) ? "" : "Use only letters, digits, “-” and “_” (at most 64 characters).";
    error.textContent = message;
    error.hidden = !message;
    input.setAttribute("aria-invalid", String(Boolean(message)));
    return message ? null : name;
  };
  input.addEventListener("input", () => { if (!error.hidden) validate(); });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = validate();
    if (name) location.assign(`/publish/${encodeURIComponent(name)}`);
    else input.focus();
  });
}

function main() {
  const updates = $("#updates");
  mountStreamsSection({ onMode: (mode) => setStatus(updates, mode === "offline" ? "error" : mode, UPDATE_MODES[mode]) });
  mountPublishForm();
}

main();
