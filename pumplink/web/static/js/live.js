// The live feed: the JSON WebSocket, authenticated by its first message (no token in a URL),
// re-authenticated when the access token is refreshed, reconnected with backoff when it drops.
import { session, refresh, onSession } from "./api.js";

export class Live {
  constructor({ onEvent, onStatus, onReconnect }) {
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.onReconnect = onReconnect;
    this.ws = null;
    this.attempt = 0;
    this.stopped = true;
    this.timer = null;
    this.opened = false;
    this.everOpen = false;
    this.unsub = onSession((s, reason) => {
      if (reason === "tokens" && this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify({ type: "auth", token: s.access }));
      }
    });
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.unsub();
    if (this.ws) this.ws.close(1000);
    this.ws = null;
  }

  status(online, detail) {
    this.onStatus(online, detail);
  }

  async connect() {
    if (this.stopped) return;
    try {
      if (!session.access || session.expiresAt - Date.now() < 10000) await refresh();
    } catch (err) {
      if (err.status === 401 || err.status === 403) return;  // signed out; the app shows why
      return this.retry(err.message);
    }
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/api/v1/ws?format=json`);
    this.ws = ws;
    this.opened = false;
    ws.onopen = () => ws.send(JSON.stringify({ token: session.access }));
    ws.onmessage = (msg) => {
      let body;
      try { body = JSON.parse(msg.data); } catch { return; }
      if (body.type === "snapshot") {
        this.opened = true;
        this.attempt = 0;
        this.status(true);
        if (this.everOpen && this.onReconnect) this.onReconnect();
        this.everOpen = true;
      }
      this.onEvent(body);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws || this.stopped) return;
      this.ws = null;
      // 1008: the token was refused (expired, or the account lost access); a fresh one decides which.
      if (ev.code === 1008) session.access = null;
      this.retry(ev.code === 1001 ? "The server is restarting." : "The live feed was interrupted.");
    };
    ws.onerror = () => {};  // onclose follows and handles it
  }

  retry(detail) {
    if (this.stopped) return;
    this.status(false, detail);
    const delay = Math.min(10000, 500 * 2 ** this.attempt) * (0.8 + Math.random() * 0.4);
    this.attempt = Math.min(this.attempt + 1, 5);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
