/**
 * Dashboard (/): the stream list, live-refreshed, and a form to start publishing.
 * Each section is mounted by its own function; add a section by writing another `mountX()`
 * and calling it from main().
 */
import {
  $, h, setStatus, watchStreams, withToken, formatBitrate, formatBytes, formatDuration, formatResolution,
  STREAM_NAME_RE,
} from "./ui.js";
import { RelayError } from "./relay-client.js";

const UPDATE_MODES = { events: "live updates", polling: "polling", offline: "server unreachable" };

/**
 * Stream table: one row per stream, updated in place (keeps focus and scroll position).
 * @param {{onMode: (mode: string) => void}} options
 */
function mountStreamsSection({ onMode, onRecordingChange }) {
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
      name: h("td", { class: "name" }, h("a", { href: `watch/${encodeURIComponent(name)}` }, name)),
      state: cell("State"),
      viewers: cell("Viewers", "num"),
      video: cell("Video"),
      audio: cell("Audio"),
      bitrate: cell("Bitrate in", "num"),
      uptime: cell("Uptime", "num"),
      recording: cell("Recording"),
      actions: h("td", { class: "actions-cell" }, h("div", { class: "actions" },
        h("a", { class: "btn btn-small btn-primary", href: `watch/${encodeURIComponent(name)}` }, "Watch"),
        h("a", { class: "btn btn-small", href: `publish/${encodeURIComponent(name)}` }, "Publish"),
        h("button", { class: "btn btn-small", type: "button", "data-action": "record" }, "Record"))),
    };
    cells.state.append(h("span", { class: "pill" }));
    const row = h("tr", { "data-stream": name }, ...Object.values(cells));
    return { row, cells, stream: null };
  };

  const fill = ({ row, cells }, s) => {
    row.dataset.live = String(Boolean(s.live));
    setStatus(cells.state.firstChild, s.live ? "live" : "offline");
    cells.viewers.textContent = String(s.viewers ?? 0);
    const note = s.made_by ? `made by bot ${s.made_by.bot} from stream ${s.made_by.stream}` : "";
    let made = cells.name.querySelector(".made-by");
    if (note && !made) cells.name.append(made = h("small", { class: "made-by" }));
    if (made) made.textContent = note ? ` ${note}` : "";
    cells.video.textContent = s.video
      ? `${s.video.codec} · ${formatResolution(s.video.width, s.video.height)}` : "—";
    cells.audio.textContent = s.audio ? s.audio.codec : "—";
    cells.bitrate.textContent = s.live ? formatBitrate(s.bitrate_in) : "—";
    cells.uptime.textContent = uptime(s);
    cells.recording.replaceChildren(s.recording ? h("span", { class: "pill", "data-state": "recording" }, "REC")
      : s.recording_error ? h("span", { class: "pill", "data-state": "error", title: s.recording_error },
        `recording failed: ${s.recording_error}`)
      : "—");
    const record = cells.actions.querySelector("[data-action=record]");
    record.textContent = s.recording ? "Stop rec" : "Record";
    record.disabled = !s.live;
    record.onclick = () => onRecordingChange(s.name, !s.recording);
  };

  let recordingState = "";
  const update = (streams) => {
    receivedAt = performance.now();
    const state = streams.map((s) => `${s.name}:${s.recording}:${s.recording_error}`).sort().join(",");
    if (state !== recordingState) { recordingState = state; onRecordingChange(null); }
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

/**
 * Recordings: the files on disk, each playable in the page (the server serves ranges), downloadable
 * and deletable. Returns `refresh(name?, on?)`: with a name it first turns that stream's recording
 * on or off.
 */
function mountRecordingsSection() {
  const tbody = $("#recordings");
  const empty = $("#recordings-empty");
  const count = $("#recording-count");
  const error = $("#recordings-error");
  const player = $("#recording-player");
  const video = $("#recording-video");

  const call = async (method, url) => {
    const res = await fetch(url, { method, headers: { Accept: "application/json" } });
    if (!res.ok) throw await RelayError.fromResponse(res);
    return res.status === 204 ? null : res.json();
  };
  const report = (err) => {
    error.textContent = err ? `Recordings: ${err.detail || err.message}` : "";
    error.hidden = !err;
  };

  const row = (r) => {
    const play = h("button", { class: "btn btn-small btn-primary", type: "button" }, "Play");
    play.onclick = () => { player.hidden = false; video.src = withToken(r.url); video.play().catch(() => {}); };
    const remove = h("button", { class: "btn btn-small", type: "button", disabled: r.recording || null }, "Delete");
    remove.onclick = () => call("DELETE", r.url).then(() => refresh(), report);
    const codecs = [r.codecs?.video, r.codecs?.audio].filter(Boolean).join(" + ") || "—";
    return h("tr", { "data-file": r.file },
      h("td", { "data-label": "Stream", class: "name" }, r.stream),
      h("td", { "data-label": "Started" }, new Date(r.start).toLocaleString()),
      h("td", { "data-label": "Duration", class: "num" }, formatDuration(r.duration)),
      h("td", { "data-label": "Size", class: "num" }, formatBytes(r.size)),
      h("td", { "data-label": "Codecs" }, r.recording ? h("span", { class: "pill", "data-state": "recording" }, "REC")
        : r.error ? h("span", { class: "pill", "data-state": "error", title: r.error }, `failed: ${r.error}`) : codecs),
      h("td", { class: "actions-cell" }, h("div", { class: "actions" }, play,
        h("a", { class: "btn btn-small", href: withToken(r.url), download: r.file }, "Download"), remove)));
  };

  const refresh = async (name = null, on = false) => {
    try {
      if (name) await call(on ? "POST" : "DELETE", `api/streams/${encodeURIComponent(name)}/recording`);
      const { recordings } = await call("GET", withToken("api/recordings"));
      tbody.replaceChildren(...recordings.map(row));
      empty.hidden = recordings.length > 0;
      count.textContent = recordings.length ? `${recordings.length} file${recordings.length === 1 ? "" : "s"}` : "";
      report(null);
    } catch (err) {
      report(err);
    }
  };
  setInterval(() => refresh(), 10_000);
  return refresh;
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
    if (name) location.assign(`publish/${encodeURIComponent(name)}`);
    else input.focus();
  });
}

function main() {
  const updates = $("#updates");
  const refreshRecordings = mountRecordingsSection();
  mountStreamsSection({
    onMode: (mode) => setStatus(updates, mode === "offline" ? "error" : mode, UPDATE_MODES[mode]),
    onRecordingChange: refreshRecordings,
  });
  mountPublishForm();
}

main();
