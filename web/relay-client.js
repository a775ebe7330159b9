/**
 * Relay browser client: WHIP (RFC 9725) publishing and WHEP (draft-ietf-wish-whep-04) playback.
 *
 * One module shared by every page. No dependencies.
 *
 * Session states (see {@link RelaySession#state}):
 *   "new"        constructed, start() not called yet
 *   "connecting" offer/answer exchange and ICE/DTLS in progress
 *   "live"       RTCPeerConnection connected
 *   "offline"    the server says the stream has no live publisher (HTTP 409)
 *   "failed"     HTTP error, network error, or the connection was lost
 *   "closed"     stop() was called
 * "offline", "failed" and "closed" are final: start a new session to try again.
 */

const SSE_REL = "urn:ietf:params:whep:ext:core:server-sent-events";
const WANTED_EVENTS = ["active", "inactive", "viewercount", "reconnect"];
const FINAL_STATES = new Set(["offline", "failed", "closed"]);

/** An HTTP or network failure, carrying the RFC 9457 problem details when the server sent them. */
export class RelayError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, title?: string, detail?: string, type?: string,
   *          retryAfter?: number|null, cause?: unknown}} [info]
   *   status 0 means the server could not be reached (network error).
   */
  constructor(message, { status = 0, title = "", detail = "", type = "", retryAfter = null, cause } = {}) {
    super(message, { cause });
    this.name = "RelayError";
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.type = type;
    this.retryAfter = retryAfter;
  }

  /**
   * Build an error from a non-2xx response, reading an application/problem+json body if any.
   * @param {Response} res
   * @returns {Promise<RelayError>}
   */
  static async fromResponse(res) {
    let problem = {};
    const text = await res.text().catch(() => "");
    if (/json/i.test(res.headers.get("Content-Type") || "")) {
      try { problem = JSON.parse(text) || {}; } catch { /* not JSON after all */ }
    } else if (text.trim() && text.length < 500) {
      problem = { detail: text.trim() };
    }
    const title = String(problem.title || res.statusText || "");
    const detail = String(problem.detail || "");
    return new RelayError(detail || title || `HTTP ${res.status}`, {
      status: res.status, title, detail, type: String(problem.type || ""),
      retryAfter: parseRetryAfter(res.headers.get("Retry-After")),
    });
  }
}

/**
 * Parse a Retry-After header value (delay-seconds or HTTP-date) into seconds.
 * @param {string|null} value
 * @returns {number|null} seconds to wait, or null when absent or unparsable
 */
export function parseRetryAfter(value) {
  if (!value) return null;
  if (/^\s*\d+(\.\d+)?\s*$/.test(value)) return Number(value);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, (date - Date.now()) / 1000);
}

/**
 * Parse an HTTP Link header (RFC 8288) into its links.
 * @param {string|null} header e.g. `<stun:stun.example>; rel="ice-server", <turn:t>; rel="ice-server"; username="u"; credential="p"`
 * @returns {{url: string, params: Record<string, string>}[]}
 */
export function parseLinkHeader(header) {
  const links = [];
  const re = /<([^>]*)>((?:\s*;\s*[^;,=\s]+(?:\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^;,]*))?)*)/g;
  for (const [, url, rest] of (header || "").matchAll(re)) {
    const params = {};
    for (const [, key, quoted, bare] of rest.matchAll(/;\s*([^;,=\s]+)(?:\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;,]*)))?/g)) {
      params[key.toLowerCase()] = quoted !== undefined ? quoted.replace(/\\(.)/g, "$1") : (bare ?? "").trim();
    }
    links.push({ url, params });
  }
  return links;
}

/**
 * Turn `rel="ice-server"` links into RTCIceServer objects.
 * @param {{url: string, params: Record<string, string>}[]} links
 * @returns {RTCIceServer[]}
 */
export function iceServersFromLinks(links) {
  return links
    .filter((l) => relIncludes(l, "ice-server"))
    .map(({ url, params }) => {
      const server = { urls: url };
      if (params.username !== undefined) server.username = params.username;
      if (params.credential !== undefined) server.credential = params.credential;
      return server;
    });
}

/**
 * Ask an endpoint for its STUN/TURN servers before gathering (a plain OPTIONS carries the
 * `rel="ice-server"` links, RFC 9725 §4.6): a peer that may use only TURN relays needs them then.
 * @param {string} endpoint WHIP/WHEP endpoint URL
 * @param {string} [token]
 * @returns {Promise<RTCIceServer[]>} [] when the server lists none or cannot be asked
 */
export async function discoverIceServers(endpoint, token = "") {
  try {
    const res = await fetch(new URL(endpoint, document.baseURI).href, {
      method: "OPTIONS", headers: token ? { Authorization: `Bearer ${token}` } : {},
    });
    return res.ok ? iceServersFromLinks(parseLinkHeader(res.headers.get("Link"))) : [];
  } catch {
    return [];
  }
}

function relIncludes(link, rel) {
  return (link.params.rel || "").split(/\s+/).includes(rel);
}

/**
 * Resolve when ICE gathering is complete, or after `timeoutMs` (whatever was gathered is used).
 * @param {RTCPeerConnection} pc
 * @param {number} [timeoutMs]
 * @returns {Promise<void>}
 */
export function waitForIceGathering(pc, timeoutMs = 2000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

/**
 * Sleep for `ms`, rejecting with an AbortError if `signal` aborts first.
 * @param {number} ms
 * @param {AbortSignal} [signal]
 * @returns {Promise<void>}
 */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => { signal?.removeEventListener("abort", onAbort); resolve(); }, ms);
    const onAbort = () => { clearTimeout(timer); reject(signal.reason); };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/**
 * Call `attempt` until it succeeds, waiting between tries while the error is retryable.
 * By default only 409 (WHEP: no live publisher) and 503 (server busy) are retried, waiting for
 * the server's Retry-After (default `defaultDelay`, at most `maxDelay` seconds).
 * @template T
 * @param {() => Promise<T>} attempt
 * @param {{signal?: AbortSignal, defaultDelay?: number, maxDelay?: number,
 *          retryable?: (err: unknown) => boolean,
 *          onWait?: (err: unknown, delaySeconds: number) => void}} [options]
 * @returns {Promise<T>} the first successful result; rethrows a non-retryable error or the abort reason
 */
export async function withRetry(attempt, {
  signal, defaultDelay = 2, maxDelay = 5, onWait,
  retryable = (err) => err instanceof RelayError && (err.status === 409 || err.status === 503),
} = {}) {
  for (;;) {
    signal?.throwIfAborted();
    try {
      return await attempt();
    } catch (err) {
      if (signal?.aborted || !retryable(err)) throw err;
      const delay = Math.max(0.5, Math.min(maxDelay, err?.retryAfter ?? defaultDelay));
      onWait?.(err, delay);
      await sleep(delay * 1000, signal);
    }
  }
}

/**
 * Common part of WHIP and WHEP sessions: one RTCPeerConnection, one HTTP resource.
 * Emits "state" events (CustomEvent, detail = state) and calls `onstate(state, session)`.
 */
export class RelaySession extends EventTarget {
  /**
   * @param {string} endpoint WHIP/WHEP endpoint URL (absolute or relative to the page)
   * @param {{token?: string, iceServers?: RTCIceServer[], iceTransportPolicy?: RTCIceTransportPolicy,
   *          gatherTimeout?: number, connectTimeout?: number, disconnectTimeout?: number,
   *          dataChannels?: string[], onstate?: (state: string, session: RelaySession) => void}} [options]
   *   `iceTransportPolicy`: "relay" uses only TURN relays (give `iceServers`: see discoverIceServers);
   *   `connectTimeout`: ms after the answer within which the connection must come up, else "failed";
   *   `disconnectTimeout`: ms a "disconnected" connection may last before the session fails;
   *   `dataChannels`: labels of the data channels to open (ordered, reliable) with the offer: the client
   *   opens them, Relay never does; they are in `channels` by label (e.g. "chat").
   */
  constructor(endpoint, {
    token = "", iceServers = [], iceTransportPolicy = "all", gatherTimeout = 2000, connectTimeout = 15000, disconnectTimeout = 2000, onstate,
    dataChannels = [],
  } = {}) {
    super();
    this.endpoint = new URL(endpoint, document.baseURI).href;
    this.token = token;
    this.gatherTimeout = gatherTimeout;
    this.connectTimeout = connectTimeout;
    this.disconnectTimeout = disconnectTimeout;
    this.onstate = onstate;
    this.dataChannels = dataChannels;
    /** @type {Record<string, RTCDataChannel>} the data channels opened with the offer, by label */
    this.channels = {};
    /** @type {string} */ this.state = "new";
    /** @type {string|null} session (resource) URL from the Location header */
    this.resourceUrl = null;
    /** @type {string|null} server-sent-events extension URL from the Link header */
    this.eventsUrl = null;
    /** @type {{url: string, params: Record<string, string>}[]} links of the 201 response */
    this.links = [];
    /** @type {Error|null} why the session failed */
    this.error = null;
    this.pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", iceServers, iceTransportPolicy });
    /** @type {Promise<string>} resolves with the final state ("offline", "failed" or "closed") */
    this.done = new Promise((resolve) => { this._resolveDone = resolve; });
    this._timer = 0;
    this._onPageHide = () => this._release();
    this.pc.addEventListener("connectionstatechange", () => this._onConnectionState());
  }

  /** Headers for every request (Authorization when a token is set). */
  _headers(extra = {}) {
    return this.token ? { ...extra, Authorization: `Bearer ${this.token}` } : extra;
  }

  /**
   * Create the offer, POST it once ICE gathering is done, apply the answer.
   * Resolves when the answer is applied (the connection may still be establishing).
   * @throws {RelayError} on HTTP or network errors (state becomes "offline" for 409, else "failed")
   */
  async start() {
    if (this.state !== "new") throw new Error(`session already ${this.state}`);
    this._setState("connecting");
    addEventListener("pagehide", this._onPageHide);
    try {
      // After the transceivers: the first m= section (BUNDLE's tag) must carry media.
      for (const label of this.dataChannels) this.channels[label] = this.pc.createDataChannel(label);
      await this.pc.setLocalDescription(await this.pc.createOffer());
      await waitForIceGathering(this.pc, this.gatherTimeout);
      const res = await this._fetch(this.endpoint, {
        method: "POST",
        headers: this._headers({ "Content-Type": "application/sdp" }),
        body: this.pc.localDescription.sdp,
      });
      if (!res.ok) throw await RelayError.fromResponse(res);
      const location = res.headers.get("Location");
      if (location) this.resourceUrl = new URL(location, res.url || this.endpoint).href;
      if (this.state === "closed") this._release(); // stop() was called during the POST
      this.links = parseLinkHeader(res.headers.get("Link"));
      const sse = this.links.find((l) => relIncludes(l, SSE_REL));
      if (sse) this.eventsUrl = new URL(sse.url, res.url || this.endpoint).href;
      const iceServers = iceServersFromLinks(this.links);
      try {
        if (iceServers.length) this.pc.setConfiguration({ ...this.pc.getConfiguration(), iceServers });
      } catch (err) {
        console.warn("ignoring unusable ice-server links:", err);
      }
      await this.pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
      if (this.state === "connecting") {
        this._timer = setTimeout(
          () => this.end("failed", new Error("Timed out connecting to the server")), this.connectTimeout);
      }
    } catch (err) {
      if (this.state === "closed") throw err;
      this.error = err;
      this._release();
      this._setState(err instanceof RelayError && err.status === 409 ? "offline" : "failed");
      throw err;
    }
  }

  /** Stop the session: DELETE the resource and close the peer connection. */
  async stop() {
    if (FINAL_STATES.has(this.state)) return;
    const request = this._release();
    this._setState("closed");
    await request;
  }

  /**
   * Fail the session from outside or inside (e.g. the stream went offline); frees server resources.
   * @param {string} state final state, "failed" or "offline"
   * @param {Error} [error]
   */
  end(state, error) {
    if (FINAL_STATES.has(this.state)) return;
    this.error = error || null;
    this._release();
    this._setState(state);
  }

  /** fetch() that turns network errors into RelayError with status 0. */
  async _fetch(url, init) {
    try {
      return await fetch(url, init);
    } catch (err) {
      throw new RelayError("Server unreachable", { status: 0, title: "Server unreachable", cause: err });
    }
  }

  /** Close everything and DELETE the resource (keepalive, so it survives page unload). Idempotent. */
  _release() {
    clearTimeout(this._timer);
    removeEventListener("pagehide", this._onPageHide);
    this._events?.close();
    this._events = null;
    this.pc.close();
    const url = this.resourceUrl;
    this.resourceUrl = null;
    if (!url) return Promise.resolve();
    return fetch(url, { method: "DELETE", headers: this._headers(), keepalive: true }).catch(() => {});
  }

  _onConnectionState() {
    const cs = this.pc.connectionState;
    if (FINAL_STATES.has(this.state)) return;
    if (cs === "connected") {
      clearTimeout(this._timer);
      this._setState("live");
    } else if (cs === "failed") {
      this.end("failed", new Error("Connection failed"));
    } else if (cs === "disconnected" && this.state === "live") {
      clearTimeout(this._timer);
      this._timer = setTimeout(
        () => this.end("failed", new Error("Connection lost")), this.disconnectTimeout);
    }
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    if (FINAL_STATES.has(state)) this._resolveDone(state);
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
    try { this.onstate?.(state, this); } catch (err) { console.error(err); }
  }
}

/** WHIP publishing session: sends one MediaStream (at most one audio and one video track). */
export class WhipSession extends RelaySession {
  /**
   * Add the stream's tracks as "sendonly" transceivers and publish.
   * @param {MediaStream} stream
   * @param {{videoCodec?: "VP8"|"H264"|"VP9"|"AV1"}} [options] codec to put first in the offer
   * @throws {RelayError}
   */
  async publish(stream, { videoCodec } = {}) {
    for (const track of [...stream.getVideoTracks(), ...stream.getAudioTracks()]) {
      const transceiver = this.pc.addTransceiver(track, { direction: "sendonly", streams: [stream] });
      if (track.kind === "video" && videoCodec) preferVideoCodec(transceiver, videoCodec);
    }
    return this.start();
  }
}

/**
 * Reorder the video codecs of a transceiver so `codec` comes first.
 * For H.264, constrained baseline (profile-level-id=42e01f) with packetization-mode=1 comes first;
 * for VP9 and AV1, profile 0 (the one Relay takes; VP9 profile 2 is 10-bit).
 * @param {RTCRtpTransceiver} transceiver
 * @param {"VP8"|"H264"|"VP9"|"AV1"} codec
 * @returns {boolean} false when the browser cannot send that codec
 */
export function preferVideoCodec(transceiver, codec) {
  if (!transceiver.setCodecPreferences) return false;
  const codecs = RTCRtpSender.getCapabilities?.("video")?.codecs || [];
  const mime = `video/${codec}`.toLowerCase();
  const rank = (c) => {
    if (c.mimeType.toLowerCase() !== mime) return 3;
    const fmtp = c.sdpFmtpLine || "";
    if (codec === "VP9" || codec === "AV1") return /(^|;)\s*profile(-id)?=[1-9]/.test(fmtp) ? 1 : 0;
    if (codec !== "H264") return 0;
    if (!/packetization-mode=1/.test(fmtp)) return 2;
    return /profile-level-id=42e01f/i.test(fmtp) ? 0 : 1;
  };
  if (!codecs.some((c) => rank(c) < 3)) return false;
  const sorted = codecs.map((c, i) => [rank(c), i, c]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map((x) => x[2]);
  try {
    transceiver.setCodecPreferences(sorted);
    return true;
  } catch (err) {
    console.warn("setCodecPreferences failed:", err);
    return false;
  }
}

/**
 * WHEP playback session: receives audio and video ("recvonly").
 * `stream` collects the remote tracks; `ontrack(track, stream)` is called for each.
 * When the server offers the SSE extension, subscribes to it and calls `onevent(name, data)`
 * for "active", "inactive", "viewercount" and "reconnect" events.
 * A remote track ending fails the session.
 */
export class WhepSession extends RelaySession {
  /**
   * @param {string} endpoint
   * @param {ConstructorParameters<typeof RelaySession>[1] & {
   *   ontrack?: (track: MediaStreamTrack, stream: MediaStream) => void,
   *   onevent?: (name: string, data: any) => void}} [options]
   */
  constructor(endpoint, options = {}) {
    super(endpoint, options);
    this.ontrack = options.ontrack;
    this.onevent = options.onevent;
    /** @type {MediaStream} all remote tracks */
    this.stream = new MediaStream();
    this.pc.addTransceiver("video", { direction: "recvonly" });
    this.pc.addTransceiver("audio", { direction: "recvonly" });
    this.pc.addEventListener("track", ({ track }) => {
      this.stream.addTrack(track);
      track.addEventListener("ended", () => this.end("failed", new Error(`Remote ${track.kind} track ended`)));
      this.ontrack?.(track, this.stream);
    });
  }

  /** @inheritdoc */
  async start() {
    await super.start();
    if (this.eventsUrl && this.onevent) this._subscribe().catch((err) => console.warn("WHEP events:", err));
  }

  /** POST the wanted event names to the SSE extension URL, then listen to the returned stream. */
  async _subscribe() {
    const link = this.links.find((l) => relIncludes(l, SSE_REL));
    const offered = link?.params.events ? link.params.events.split(",").map((s) => s.trim()) : WANTED_EVENTS;
    const res = await this._fetch(this.eventsUrl, {
      method: "POST",
      headers: this._headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(WANTED_EVENTS.filter((e) => offered.includes(e))),
    });
    if (!res.ok) throw await RelayError.fromResponse(res);
    const location = res.headers.get("Location");
    if (!location || FINAL_STATES.has(this.state)) return;
    this._events = new EventSource(new URL(location, res.url || this.eventsUrl).href);
    for (const name of WANTED_EVENTS) {
      this._events.addEventListener(name, (ev) => {
        let data = null;
        try { data = JSON.parse(ev.data); } catch { data = ev.data; }
        try { this.onevent(name, data); } catch (err) { console.error(err); }
      });
    }
  }
}

/**
 * Samples getStats() once per call and derives rates from the previous sample.
 * `type` "outbound-rtp" for a publisher, "inbound-rtp" for a viewer.
 */
export class StatsMeter {
  /**
   * @param {RTCPeerConnection} pc
   * @param {"inbound-rtp"|"outbound-rtp"} type
   */
  constructor(pc, type) {
    this.pc = pc;
    this.type = type;
    this._prev = null;
  }

  /**
   * @returns {Promise<{bitrate: number|null, fps: number|null, width: number|null, height: number|null,
   *   codec: string, framesDecoded: number|null, packetsLost: number|null, lossPercent: number|null,
   *   jitterMs: number|null, qualityLimitationReason: string}>}
   *   bitrate counts audio and video, in bit/s; the other fields describe the video stream.
   */
  async sample() {
    const report = await this.pc.getStats();
    let bytes = 0;
    let video = null;
    for (const s of report.values()) {
      if (s.type !== this.type) continue;
      bytes += (this.type === "inbound-rtp" ? s.bytesReceived : s.bytesSent) || 0;
      if (s.kind === "video" && (!video || (s.frameWidth || 0) > (video.frameWidth || 0))) video = s;
    }
    const now = performance.now();
    const prev = this._prev;
    this._prev = { bytes, now };
    const bitrate = prev && now > prev.now ? Math.max(0, ((bytes - prev.bytes) * 8000) / (now - prev.now)) : null;
    const lost = video?.packetsLost ?? null;
    const received = video?.packetsReceived ?? null;
    return {
      bitrate,
      fps: video?.framesPerSecond ?? null,
      width: video?.frameWidth ?? null,
      height: video?.frameHeight ?? null,
      codec: (video?.codecId && report.get(video.codecId)?.mimeType?.replace(/^video\//, "")) || "",
      framesDecoded: video?.framesDecoded ?? null,
      packetsLost: lost,
      lossPercent: lost !== null && received !== null && lost + received > 0 ? (100 * lost) / (lost + received) : null,
      jitterMs: video?.jitter != null ? video.jitter * 1000 : null,
      qualityLimitationReason: video?.qualityLimitationReason || "",
    };
  }
}
