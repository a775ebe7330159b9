/**
 * The chat beside a broadcast, on the data channel labelled "chat" of the page's own WHIP or WHEP
 * session (no other signalling). The server stamps every message (name, time); this page only
 * sends {"name"} once to join and {"text"} to talk, and shows what comes back.
 * The panel builds its own markup into the element it is given (the same on both pages).
 * Each new session (the watch page reconnects by itself) gets the history again and is re-joined
 * under the name chosen before.
 */
import { h } from "/static/ui.js";

export const CHAT_LABEL = "chat";
const NAME_KEY = "relay.chat.name";
const MAX_SHOWN = 200;

export class ChatPanel {
  /**
   * @param {HTMLElement} root an empty element (e.g. <aside id="chat">) the chat is built into
   * @param {{canClear?: boolean}} [options] `canClear`: a "Clear" button (the publisher's page)
   */
  constructor(root, { canClear = false } = {}) {
    this.root = root;
    this.who = h("p", { id: "chat-who", class: "muted" });
    this.list = h("ol", { id: "chat-messages", class: "chat-messages", "aria-live": "polite" });
    this.error = h("p", { id: "chat-error", class: "field-error", role: "alert", hidden: true });
    this.nameInput = h("input", { id: "chat-name", type: "text", maxlength: 32, autocomplete: "nickname", placeholder: "Your name",
                                  "aria-label": "Display name" });
    this.nameForm = h("form", { id: "chat-join-form", class: "chat-form" }, this.nameInput,
      h("button", { id: "chat-join", class: "btn btn-primary", type: "submit" }, "Join chat"));
    this.textInput = h("input", { id: "chat-text", type: "text", maxlength: 500, autocomplete: "off", placeholder: "Say something",
                                  "aria-label": "Message" });
    this.textForm = h("form", { id: "chat-form", class: "chat-form" }, this.textInput,
      h("button", { id: "chat-send", class: "btn btn-primary", type: "submit" }, "Send"));
    const clear = canClear && h("button", { id: "chat-clear", class: "btn btn-small", type: "button",
      onclick: () => this._open() && this.channel.send(JSON.stringify({ clear: true })) }, "Clear");
    root.replaceChildren(h("div", { class: "card-head" }, h("h2", {}, "Chat"), clear), this.who, this.list,
      this.error, this.nameForm, this.textForm);
    /** @type {RTCDataChannel|null} */ this.channel = null;
    /** @type {string} the name this page chats under, once the server accepted it */ this.name = "";
    this.nameInput.value = sessionStorage.getItem(NAME_KEY) || "";
    this.nameForm.addEventListener("submit", (ev) => { ev.preventDefault(); this.join(this.nameInput.value); });
    this.textForm.addEventListener("submit", (ev) => { ev.preventDefault(); this.say(); });
    this._sync();
  }

  /** Follow a new session's chat channel (null: no session). */
  attach(channel) {
    this.channel = channel;
    this.name = "";
    this.off = false;
    this.rejoins = 0;
    this._sync();
    if (!channel) return;
    const mine = channel;
    const opened = () => {
      if (this.channel !== mine) return;
      this.list.replaceChildren(); // the server sends the history again
      this.showError("");
      const saved = sessionStorage.getItem(NAME_KEY);
      if (saved) this.join(saved);
      this._sync();
    };
    if (channel.readyState === "open") opened();
    else channel.addEventListener("open", opened);
    channel.addEventListener("message", (ev) => { if (this.channel === mine) this._receive(ev.data); });
    channel.addEventListener("close", () => { if (this.channel === mine) this._sync(); });
  }

  join(name) {
    if (!this._open()) return;
    this.pendingName = name.trim();
    this.channel.send(JSON.stringify({ name: this.pendingName }));
  }

  say() {
    const text = this.textInput.value;
    if (!text.trim() || !this._open()) return;
    this.channel.send(JSON.stringify({ text }));
    this.textInput.value = "";
  }

  showError(text) {
    this.error.textContent = text;
    this.error.hidden = !text;
  }

  _open() { return this.channel?.readyState === "open"; }

  _receive(data) {
    let body;
    try { body = JSON.parse(data); } catch { return; }
    if (body.type === "message") this._add(body);
    else if (body.type === "joined") {
      this.name = body.name;
      sessionStorage.setItem(NAME_KEY, body.name);
      this.showError("");
    } else if (body.type === "cleared") this.list.replaceChildren();
    else if (body.type === "error") {
      const saved = sessionStorage.getItem(NAME_KEY);
      if (body.error === "name-taken" && saved === this.pendingName && this.rejoins++ < 10) {
        // After a reconnect the old session may hold the name until the server notices it is gone.
        const mine = this.channel;
        setTimeout(() => { if (this.channel === mine && !this.name) this.join(saved); }, 2000);
        return;
      }
      if (["bad-name", "name-taken"].includes(body.error)) sessionStorage.removeItem(NAME_KEY);
      this.off = body.error === "chat-off";
      this.showError(body.detail || body.error);
    }
    this._sync();
  }

  _add(message) {
    const atBottom = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
    const time = new Date(message.time);
    const item = h("li", { "data-role": message.role },
      h("time", { datetime: message.time }, Number.isNaN(time.getTime()) ? "" : time.toLocaleTimeString()),
      h("strong", {}, message.from),
      message.role === "publisher" ? h("span", { class: "badge" }, "host") : null,
      h("span", { class: "text" }, message.text));
    this.list.append(item);
    while (this.list.children.length > MAX_SHOWN) this.list.firstElementChild.remove();
    if (atBottom) this.list.scrollTop = this.list.scrollHeight;
  }

  _sync() {
    const open = this._open() && !this.off;
    this.root.dataset.state = open ? (this.name ? "joined" : "open") : "closed";
    this.nameForm.hidden = Boolean(this.name);
    this.textForm.hidden = !this.name;
    for (const el of this.root.querySelectorAll("input, button")) el.disabled = !open;
    this.who.textContent = this.name ? `Chatting as ${this.name}` : open ? "Choose a name to chat" : "Chat connects with the stream";
  }
}
