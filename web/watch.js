/**
 * Viewer page (/watch/NAME): WHEP POST /whep/NAME, waits while the stream is offline and
 * reconnects by itself.
 * The chat beside the video rides the session's data channel "chat" (see chat.js).
 * `?ice=relay` plays only through the server's TURN relays (iceTransportPolicy "relay"): to check
 * a TURN server, or to hide the viewer's address from the server.
 * Test hook: window.relayWatch = { state, pc, session, chat }
 *   state: "connecting" | "live" | "waiting" | "failed"
 */
import { WhepSession, StatsMeter, RelayError, withRetry, sleep, discoverIceServers } from "./relay-client.js";
import { ChatPanel, CHAT_LABEL } from "./chat.js";
import {
  $, setStatus, describeError, streamNameFromPath, watchStreams,
  formatBitrate, formatResolution, formatNumber,
} from "./ui.js";

const BOT_EVENTS_LABEL = "events"; // what bot.say() sends on (relay/client/bot.py)
const name = streamNameFromPath();
const token = new URLSearchParams(location.search).get("token") || "";
const relayOnly = new URLSearchParams(location.search).get("ice") === "relay";
let endpoint = `whep/${encodeURIComponent(name)}`;

const ui = {
  status: $("#status"),
  viewers: $("#viewers"),
  player: $("#player"),
  video: $("#video"),
  overlay: $("#overlay"),
  overlayText: $("#overlay-text"),
  spinner: $("#spinner"),
  retry: $("#retry"),
  unmute: $("#unmute"),
  statsToggle: $("#stats-toggle"),
  fullscreen: $("#fullscreen"),
  stats: $("#stats"),
  stat: {
    resolution: $("#stat-resolution"), fps: $("#stat-fps"), bitrate: $("#stat-bitrate"), codec: $("#stat-codec"),
    loss: $("#stat-loss"), jitter: $("#stat-jitter"), frames: $("#stat-frames"),
  },
};

/** Test hook and page state. */
const app = { state: "connecting", pc: null, session: null, chat: new ChatPanel($("#chat")) };
window.relayWatch = app;

const STATUS_TEXT = { connecting: "connecting", live: "live", waiting: "offline — waiting", failed: "failed" };
const OVERLAY_TEXT = {
  connecting: "Connecting…",
  waiting: "The stream is offline. Waiting for the publisher…",
  failed: "Playback failed.",
};
/** HTTP statuses that retrying will not fix. */
const FATAL = new Set([400, 401, 403, 405, 406, 415, 422]);

/** Aborted to cut a retry wait short (the stream list says the stream just went live). */
let kick = new AbortController();

function setState(state, message = "") {
  if (state !== "live") for (const el of Object.values(ui.stat)) el.textContent = "—";
  app.state = state;
  setStatus(ui.status, state, STATUS_TEXT[state]);
  ui.overlay.hidden = state === "live";
  ui.spinner.hidden = state === "failed";
  ui.retry.hidden = state !== "failed";
  ui.overlayText.textContent = message || OVERLAY_TEXT[state];
}

/** One WHEP attempt; resolves with a session whose answer is applied. */
async function connect() {
  const ice = relayOnly ? { iceTransportPolicy: "relay", iceServers: await discoverIceServers(endpoint, token) } : {};
  const session = new WhepSession(endpoint, {
    token,
    dataChannels: [CHAT_LABEL, BOT_EVENTS_LABEL],
    ...ice,
    onstate: (state) => {
      if (state === "live" && app.session === session) setState("live");
    },
    ontrack: (_track, stream) => {
      if (ui.video.srcObject !== stream) ui.video.srcObject = stream;
      ui.video.play().catch(() => {});
    },
    onevent: (event, data) => {
      if (event === "viewercount" && Number.isFinite(data?.viewercount)) ui.viewers.textContent = String(data.viewercount);
      if (event === "inactive") session.end("offline");
      if (event === "reconnect") {
        if (data?.url) endpoint = new URL(data.url, session.endpoint).href;
        session.end("failed", new Error("Server asked to reconnect"));
      }
    },
  });
  app.session = session;
  app.pc = session.pc;
  const started = session.start();
  app.chat.attach(session.channels[CHAT_LABEL]); // created with the offer, open once connected
  showBotEvents(session.channels[BOT_EVENTS_LABEL]);
  await started;
  setState("connecting");
  return session;
}

function onWait(err, delay) {
  if (err.status === 409 || err.status === 404) setState("waiting");
  else setState("connecting", `${describeError(err, { role: "watch", stream: name })} Retrying in ${Math.round(delay)} s…`);
}

/** Connect, play until the session ends, go back to waiting; forever, unless an error is fatal. */
async function run() {
  setState("connecting");
  for (;;) {
    let session;
    try {
      session = await withRetry(connect, {
        signal: kick.signal,
        maxDelay: 5,
        onWait,
        retryable: (err) => err instanceof RelayError && !FATAL.has(err.status),
      });
    } catch (err) {
      if (kick.signal.aborted) { kick = new AbortController(); continue; }
      setState("failed", describeError(err, { role: "watch", stream: name }));
      return;
    }
    const end = await session.done;
    if (end === "offline") ui.video.srcObject = null;
    setState(end === "offline" ? "waiting" : "connecting");
    await sleep(1000);
  }
}

/** Follow the stream list: viewer count, and live/offline changes seen before the media path notices. */
function followStream() {
  let wasLive = null;
  watchStreams((streams) => {
    const stream = streams.find((s) => s.name === name);
    const live = Boolean(stream?.live);
    ui.viewers.textContent = String(stream?.viewers ?? 0);
    if (wasLive && !live) app.session?.end("offline");
    if (wasLive === false && live && app.state === "waiting") kick.abort();
    wasLive = live;
  });
}

function setupControls() {
  const syncMute = () => { ui.unmute.textContent = ui.video.muted ? "Unmute" : "Mute"; };
  ui.unmute.addEventListener("click", () => {
    ui.video.muted = !ui.video.muted;
    ui.video.play().catch(() => {});
    syncMute();
  });
  ui.video.addEventListener("volumechange", syncMute);

  ui.fullscreen.hidden = !(document.fullscreenEnabled || ui.video.webkitEnterFullscreen);
  ui.fullscreen.addEventListener("click", () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else if (document.fullscreenEnabled) ui.player.requestFullscreen().catch(() => {});
    else ui.video.webkitEnterFullscreen?.();
  });
  document.addEventListener("fullscreenchange", () => {
    ui.fullscreen.textContent = document.fullscreenElement ? "Exit fullscreen" : "Fullscreen";
  });

  ui.statsToggle.addEventListener("click", () => {
    ui.stats.hidden = !ui.stats.hidden;
    ui.statsToggle.setAttribute("aria-pressed", String(!ui.stats.hidden));
  });
  ui.retry.addEventListener("click", () => run());

  let meter = null;
  setInterval(async () => {
    if (ui.stats.hidden || app.state !== "live" || !app.pc) return;
    if (meter?.pc !== app.pc) meter = new StatsMeter(app.pc, "inbound-rtp");
    const s = await meter.sample().catch(() => null);
    if (!s) return;
    ui.stat.resolution.textContent = formatResolution(s.width, s.height);
    ui.stat.fps.textContent = formatNumber(s.fps, 0, " fps");
    ui.stat.bitrate.textContent = formatBitrate(s.bitrate);
    ui.stat.codec.textContent = s.codec || "—";
    ui.stat.loss.textContent = s.packetsLost === null ? "—" : `${s.packetsLost} (${formatNumber(s.lossPercent, 1, " %")})`;
    ui.stat.jitter.textContent = formatNumber(s.jitterMs, 1, " ms");
    ui.stat.frames.textContent = formatNumber(s.framesDecoded);
  }, 1000);
}

/** Bot events (docs/bots.md): each message on the data channel "events" shown as a small badge. */
function showBotEvents(channel) {
  const badge = $("#bot-event");
  channel.addEventListener("message", (event) => {
    if (typeof event.data !== "string") return;
    let text = event.data;
    try {
      const data = JSON.parse(event.data);
      if (data && typeof data === "object") {
        text = Object.entries(data).map(([k, v]) => `${k} ${typeof v === "number" ? formatNumber(v, 2) : v}`).join(" · ");
      }
    } catch { /* plain text */ }
    badge.textContent = text.slice(0, 80);
    badge.hidden = false;
  });
}

document.title = `Relay — Watch ${name}`;
$("#stream-name").textContent = name;
setupControls();
followStream();
run();
