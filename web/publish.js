/**
 * Publisher page (/publish/NAME): camera or screen → WHIP POST /whip/NAME.
 * The chat (see chat.js) rides the WHIP session's data channel "chat": the publisher may clear it.
 * `?codec=VP8|H264|VP9|AV1` preselects the video codec.
 * Test hook: window.relayPublish = { state, pc, session, stream, chat }
 *   state: "idle" | "starting" | "connecting" | "live" | "failed" | "stopped"
 */
import { WhipSession, StatsMeter } from "./relay-client.js";
import { ChatPanel, CHAT_LABEL } from "./chat.js";
import {
  $, h, setStatus, showMessage, describeError, streamNameFromPath, watchViewerCount,
  formatBitrate, formatResolution, formatNumber, STREAM_NAME_RE,
} from "./ui.js";

const name = streamNameFromPath();
const ui = {
  status: $("#status"),
  message: $("#message"),
  preview: $("#preview"),
  previewEmpty: $("#preview-empty"),
  form: $("#settings"),
  start: $("#start"),
  stop: $("#stop"),
  camera: $("#camera"),
  microphone: $("#microphone"),
  deviceFields: $("#device-fields"),
  resolution: $("#resolution"),
  framerate: $("#framerate"),
  codec: $("#codec"),
  token: $("#token"),
  stats: {
    bitrate: $("#stat-bitrate"), fps: $("#stat-fps"), resolution: $("#stat-resolution"),
    codec: $("#stat-codec"), limit: $("#stat-limit"),
  },
};

/** Test hook and page state. */
const app = { state: "idle", pc: null, session: null, stream: null, chat: new ChatPanel($("#chat"), { canClear: true }) };
window.relayPublish = app;

const STATUS_TEXT = { starting: "starting camera", connecting: "connecting", live: "live", failed: "failed" };
let statsTimer = 0;

function setState(state, message = "", kind = "error") {
  app.state = state;
  setStatus(ui.status, state, STATUS_TEXT[state] || state);
  showMessage(ui.message, message, kind);
  const busy = ["starting", "connecting", "live"].includes(state);
  ui.start.disabled = busy;
  ui.stop.disabled = !busy && !app.stream;
  for (const el of ui.form.querySelectorAll("select, input")) el.disabled = busy;
}

const source = () => ui.form.elements.source.value;

/** A readable message for getUserMedia/getDisplayMedia failures. */
function mediaErrorMessage(err) {
  const screen = source() === "screen";
  switch (err?.name) {
    case "NotAllowedError":
      return screen ? "Screen sharing was cancelled or blocked."
        : "Camera/microphone access was denied. Allow it in your browser’s site settings, then press Start again.";
    case "NotFoundError":
      return "No camera or microphone was found. Connect one, choose “No microphone”, or share your screen.";
    case "NotReadableError":
      return "The camera or microphone is in use by another application, or the system blocked it.";
    case "OverconstrainedError":
      return "The selected device is not available any more, or cannot do these settings. Pick another one.";
    default:
      return `Could not open the ${screen ? "screen" : "camera"}: ${err?.message || err}`;
  }
}

/** Open the camera+microphone or the screen with the chosen settings. */
function getMedia() {
  const md = navigator.mediaDevices;
  if (!md) throw new DOMException("Camera access needs a secure page (HTTPS or localhost).", "SecurityError");
  const [width, height] = ui.resolution.value.split("x").map(Number);
  const video = { width: { ideal: width }, height: { ideal: height }, frameRate: { ideal: Number(ui.framerate.value) } };
  if (source() === "screen") return md.getDisplayMedia({ video, audio: true });
  if (ui.camera.value) video.deviceId = { exact: ui.camera.value };
  const mic = ui.microphone.value;
  const audio = mic === "none" ? false : mic ? { deviceId: { exact: mic } } : true;
  return md.getUserMedia({ video, audio });
}

/** Fill the camera and microphone pickers, keeping the current choice. */
async function refreshDevices() {
  let devices = [];
  try { devices = await navigator.mediaDevices?.enumerateDevices() || []; } catch { /* keep defaults */ }
  const fill = (select, kind, label, extra = []) => {
    const current = select.value;
    const found = devices.filter((d) => d.kind === kind && d.deviceId && d.deviceId !== "default");
    select.replaceChildren(
      h("option", { value: "" }, `Default ${label}`),
      ...found.map((d, i) => h("option", { value: d.deviceId }, d.label || `${label} ${i + 1}`)),
      ...extra);
    if ([...select.options].some((o) => o.value === current)) select.value = current;
  };
  fill(ui.camera, "videoinput", "camera");
  fill(ui.microphone, "audioinput", "microphone", [h("option", { value: "none" }, "No microphone")]);
}

function releaseMedia() {
  clearInterval(statsTimer);
  app.stream?.getTracks().forEach((t) => t.stop());
  app.stream = null;
  ui.preview.srcObject = null;
  ui.previewEmpty.hidden = false;
}

async function start() {
  await app.session?.stop();
  releaseMedia();
  setState("starting");
  try {
    app.stream = await getMedia();
  } catch (err) {
    setState("failed", mediaErrorMessage(err));
    return;
  }
  ui.preview.srcObject = app.stream;
  ui.previewEmpty.hidden = true;
  ui.preview.play().catch(() => {});
  refreshDevices();
  for (const track of app.stream.getTracks()) {
    track.addEventListener("ended", () => {
      if (app.state !== "live" && app.state !== "connecting") return;
      stop(track.kind === "video" && source() === "screen" ? "Screen sharing ended." : `The ${track.kind} device was disconnected.`);
    });
  }

  const token = ui.token.value.trim();
  sessionStorage.setItem("relay.token", token);
  const session = new WhipSession(`whip/${encodeURIComponent(name)}`, {
    token, onstate: onSessionState, dataChannels: [CHAT_LABEL],
  });
  app.session = session;
  app.pc = session.pc;
  setState("connecting");
  try {
    const published = session.publish(app.stream, { videoCodec: ui.codec.value });
    app.chat.attach(session.channels[CHAT_LABEL]); // created with the offer, open once connected
    await published;
  } catch (err) {
    if (app.session === session && session.state !== "closed") {
      setState("failed", describeError(err, { role: "publish", stream: name }));
    }
  }
}

function onSessionState(state, session) {
  if (session !== app.session) return;
  if (state === "live") {
    setState("live");
    startStats(session.pc);
  } else if (state === "failed" && app.state === "live") {
    clearInterval(statsTimer);
    setState("failed", `The connection to the server was lost (${session.error?.message || "unknown error"}). Press Start to publish again.`);
  }
}

/** Stop publishing and turn the camera off. */
async function stop(reason = "") {
  const session = app.session;
  app.session = null;
  releaseMedia();
  setState("stopped", reason, "info");
  await session?.stop();
}

function startStats(pc) {
  const meter = new StatsMeter(pc, "outbound-rtp");
  clearInterval(statsTimer);
  const tick = async () => {
    if (pc.connectionState === "closed") return;
    const s = await meter.sample().catch(() => null);
    if (!s) return;
    ui.stats.bitrate.textContent = formatBitrate(s.bitrate);
    ui.stats.fps.textContent = formatNumber(s.fps, 0, " fps");
    ui.stats.resolution.textContent = formatResolution(s.width, s.height);
    ui.stats.codec.textContent = s.codec || "—";
    ui.stats.limit.textContent = s.qualityLimitationReason || "—";
  };
  tick();
  statsTimer = setInterval(tick, 1000);
}

function init() {
  document.title = `Relay — Publish ${name}`;
  $("#stream-name").textContent = name;
  const watchLink = $("#watch-link");
  watchLink.href = `watch/${encodeURIComponent(name)}`;
  watchLink.textContent = new URL(watchLink.href, location.href).href;
  ui.token.value = new URLSearchParams(location.search).get("token") || sessionStorage.getItem("relay.token") || "";
  const sendable = RTCRtpSender.getCapabilities?.("video")?.codecs || [];
  for (const option of ui.codec.options) {
    if (!sendable.some((c) => c.mimeType.toLowerCase() === `video/${option.value}`.toLowerCase())) {
      option.disabled = true;
      option.textContent += " (not supported by this browser)";
    }
  }
  const wanted = new URLSearchParams(location.search).get("codec")?.toUpperCase();  // ?codec=AV1 preselects it
  const preset = [...ui.codec.options].find((o) => o.value === wanted && !o.disabled);
  if (preset) ui.codec.value = preset.value;
  ui.form.addEventListener("change", () => { ui.deviceFields.hidden = source() === "screen"; });
  ui.form.addEventListener("submit", (ev) => { ev.preventDefault(); start(); });
  ui.stop.addEventListener("click", () => stop());
  navigator.mediaDevices?.addEventListener("devicechange", refreshDevices);
  refreshDevices();
  watchViewerCount($("#viewers"), name);
  setState("idle");
  if (!STREAM_NAME_RE.test(name)) {
    showMessage(ui.message, `“${name}” is not a valid stream name: use letters, digits, “-” and “_” (at most 64).`);
    ui.start.disabled = true;
  }
}

init();
