// The one websocket per page (docs/websocket.md). The only code that parses frames.
//
//   import { getClient } from "/web/js/client.js";
//   const client = getClient();
//   const sub = client.subscribe({ signals: ["engine.rpm"], pixels: 0 }, {
//     onLatest(signalIndex, timeS, value) { ... },
//   });
//   sub.close();
//
// A subscription's handler may implement any of:
//   onSubscribed(msg)            the server's answer: resolved signals, column grid
//   onColumns(sig, firstColumn, n, count, first, min, max, last)
//                                M4 columns; the arrays are Float64Array views into the
//                                frame, valid only during the call (copy what you keep)
//   onLatest(sig, timeS, value)  latest value of a signal
//   onGaps(sig, startS, endS)    loss intervals (Float64Array views, seconds)
//   onStrings(values)            {"status.message": [t_ns, "text"]}
//   onProgress(done), onComplete(), onError(message)
//   onReset()                    the connection was lost: drop what you hold, it comes again
// Events on the client (an EventTarget): "hello", "status", "state", "error", "frame".
// Drawing goes through client.schedule(element): one requestAnimationFrame per page calls
// element.draw() for every element marked dirty since the last frame (oldest first, within
// client.budgetMs; draw() returns false when it had nothing to do), and the time spent in
// parsing and drawing is recorded per animation frame (client.perf) for the frame budget.

const MAGIC = 0x31464453; // "SDF1" little-endian
const BLOCK_COLUMNS = 1;
const BLOCK_LATEST = 2;
const BLOCK_GAPS = 3;
const PERF_SIZE = 1 << 14;

export const STATES = ["connecting", "open", "reconnecting", "closed"];

export class Client extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.state = "connecting";
    this.hello = null;
    this.status = null;
    this.signals = new Map(); // "engine.rpm" -> {signal, channel}
    this.channels = new Map(); // name -> channel from hello
    this.nowS = 0; // server time of the last frame or status
    this._nowAt = 0; // performance.now() when nowS was received
    this._subs = new Map();
    this._nextSub = 1;
    this._ws = null;
    this._retry = 0;
    this._retryTimer = 0;
    this._retryAt = 0;
    this._dirty = new Set();
    this._raf = 0;
    this._parseMs = 0;
    this.budgetMs = 3; // drawing time per animation frame before the rest waits a frame
    this.bytes = 0; // bytes received on the websocket (text and binary)
    this.frames = 0; // binary frames received
    this.draws = 0; // element draws done
    // script time per animation frame (ms), a ring: perf.ms[i % PERF_SIZE], perf.count
    // and how many elements drew in that frame: perf.drew[i % PERF_SIZE]
    this.perf = { ms: new Float64Array(PERF_SIZE), drew: new Uint16Array(PERF_SIZE), count: 0 };
    this._onFrame = () => this._drawFrame();
    this._badge = null;
    this.lastActive = new Map(); // channel name -> performance.now() of the last new record
    this._records = new Map(); // channel name -> records counter from the last status
    this._connect();
  }

  /** Server time now (seconds since the epoch), extrapolated from the last message. */
  serverNow() {
    if (!this.nowS) return Date.now() / 1000;
    return this.nowS + (performance.now() - this._nowAt) / 1000;
  }

  /** Longest silence (s) on a signal's channel that is still no gap: 3 record intervals. */
  quietS(name) {
    const info = this.signals.get(name);
    if (!info) return 5;
    const ch = info.channel.name;
    const rate = this.status?.channels?.[ch]?.rate_hz || info.channel.rate_hz || 0;
    return rate > 0 ? Math.min(60, 3 / rate) : 5;
  }

  signalInfo(name) {
    return this.signals.get(name) || null;
  }

  /** Subscribe; returns {id, update(req), pause(), resume(), close()}. */
  subscribe(request, handler) {
    const id = this._nextSub++;
    const entry = { id, request: { ...request }, handler, paused: false };
    this._subs.set(id, entry);
    this._sendSubscribe(entry);
    const client = this;
    return {
      id,
      get request() {
        return entry.request;
      },
      update(req) {
        entry.request = { ...req };
        entry.paused = false;
        client._sendSubscribe(entry);
      },
      pause() {
        entry.paused = true;
        client._send({ type: "pause", sub: id });
      },
      resume() {
        entry.paused = false;
        client._send({ type: "resume", sub: id });
      },
      close() {
        if (client._subs.delete(id)) client._send({ type: "unsubscribe", sub: id });
      },
    };
  }

  /** Mark an element dirty: its draw() runs in the next animation frame. */
  schedule(element) {
    this._dirty.add(element);
    if (!this._raf) this._raf = requestAnimationFrame(this._onFrame);
  }

  /** Seconds until the next reconnect attempt (0 when not waiting). */
  retryIn() {
    return this._retryAt ? Math.max(0, (this._retryAt - performance.now()) / 1000) : 0;
  }

  /** Reconnect now (the badge's "retry" link). */
  reconnectNow() {
    if (this.state === "open") return;
    clearTimeout(this._retryTimer);
    this._connect();
  }

  // -- internals ------------------------------------------------------------------------

  _send(msg) {
    if (this._ws && this._ws.readyState === WebSocket.OPEN) this._ws.send(JSON.stringify(msg));
  }

  _sendSubscribe(entry) {
    this._send({ type: "subscribe", sub: entry.id, ...entry.request });
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._updateBadge();
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  _connect() {
    this._retryAt = 0;
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this._scheduleReconnect();
      return;
    }
    ws.binaryType = "arraybuffer";
    this._ws = ws;
    ws.onopen = () => {
      this._retry = 0;
    };
    ws.onmessage = (ev) => this._message(ev.data);
    ws.onclose = () => {
      if (this._ws !== ws) return;
      this._ws = null;
      for (const entry of this._subs.values()) entry.handler.onReset?.();
      this._scheduleReconnect();
    };
    ws.onerror = () => {}; // onclose follows and reconnects
  }

  _scheduleReconnect() {
    // back-off 0.5 s, 1 s, 2 s ... 10 s, with jitter so that many pages do not come back
    // all at once after a server restart
    const delay = Math.min(10000, 500 * 2 ** this._retry) * (0.75 + Math.random() * 0.5);
    this._retry = Math.min(this._retry + 1, 5);
    this._retryAt = performance.now() + delay;
    this._setState("reconnecting");
    this._retryTimer = setTimeout(() => this._connect(), delay);
  }

  _message(data) {
    const t0 = performance.now();
    if (typeof data === "string") {
      this.bytes += data.length;
      let msg;
      try {
        msg = JSON.parse(data);
      } catch {
        return;
      }
      this._json(msg);
    } else {
      this.bytes += data.byteLength;
      this._frame(data);
    }
    this._parseMs += performance.now() - t0;
    if (!this._raf) this._raf = requestAnimationFrame(this._onFrame);
  }

  _json(msg) {
    const sub = msg.sub !== undefined ? this._subs.get(msg.sub) : undefined;
    switch (msg.type) {
      case "hello": {
        const first = this.state !== "open";
        this.hello = msg;
        this.signals.clear();
        this.channels.clear();
        for (const ch of msg.channels || []) {
          this.channels.set(ch.name, ch);
          for (const s of ch.signals || []) this.signals.set(s.name, { signal: s, channel: ch });
        }
        if (msg.server?.now_ns) this._setNow(msg.server.now_ns / 1e9);
        if (first) this._records.clear(); // a restarted server counts from zero
        // (re)connected, or the channels changed (a restarted server learns them from the
        // relay's announces, so a first subscribe may have matched nothing): resynchronise
        // every subscription from scratch
        for (const entry of this._subs.values()) {
          this._sendSubscribe(entry);
          if (entry.paused) this._send({ type: "pause", sub: entry.id });
        }
        this._setState("open");
        this.dispatchEvent(new CustomEvent("hello", { detail: msg }));
        break;
      }
      case "status": {
        this.status = msg;
        if (msg.now_ns) this._setNow(msg.now_ns / 1e9);
        const now = performance.now();
        for (const [name, ch] of Object.entries(msg.channels || {})) {
          const before = this._records.get(name);
          if (before !== undefined && ch.records > before) this.lastActive.set(name, now);
          this._records.set(name, ch.records);
        }
        this.dispatchEvent(new CustomEvent("status", { detail: msg }));
        break;
      }
      case "subscribed":
        sub?.handler.onSubscribed?.(msg);
        break;
      case "progress":
        sub?.handler.onProgress?.(msg.done);
        break;
      case "complete":
        sub?.handler.onComplete?.();
        break;
      case "strings":
        sub?.handler.onStrings?.(msg.values);
        break;
      case "error":
        if (sub) sub.handler.onError?.(msg.message);
        this.dispatchEvent(new CustomEvent("error", { detail: msg }));
        break;
      case "lagging":
        this.dispatchEvent(new CustomEvent("error", { detail: msg }));
        break;
      default:
        break;
    }
  }

  _setNow(s) {
    this.nowS = s;
    this._nowAt = performance.now();
  }

  _frame(buf) {
    if (buf.byteLength < 16) return;
    const dv = new DataView(buf);
    if (dv.getUint32(0, true) !== MAGIC) return;
    const nBlocks = dv.getUint32(4, true);
    this._setNow(dv.getFloat64(8, true));
    this.frames++;
    let off = 16;
    for (let b = 0; b < nBlocks && off + 16 <= buf.byteLength; b++) {
      const type = dv.getUint16(off, true);
      const length = dv.getUint32(off + 4, true);
      const subId = dv.getUint32(off + 8, true);
      const sig = dv.getUint32(off + 12, true);
      const body = off + 16;
      if (length < 16 || off + length > buf.byteLength) break;
      const entry = this._subs.get(subId);
      const h = entry && entry.handler;
      if (h) {
        if (type === BLOCK_COLUMNS) {
          if (h.onColumns) {
            const firstCol = dv.getFloat64(body, true);
            const n = dv.getUint32(body + 8, true);
            const a = body + 16;
            const step = n * 8;
            h.onColumns(
              sig,
              firstCol,
              n,
              new Float64Array(buf, a, n),
              new Float64Array(buf, a + step, n),
              new Float64Array(buf, a + 2 * step, n),
              new Float64Array(buf, a + 3 * step, n),
              new Float64Array(buf, a + 4 * step, n),
            );
          }
        } else if (type === BLOCK_LATEST) {
          h.onLatest?.(sig, dv.getFloat64(body, true), dv.getFloat64(body + 8, true));
        } else if (type === BLOCK_GAPS) {
          if (h.onGaps) {
            const n = dv.getUint32(body, true);
            h.onGaps(sig, new Float64Array(buf, body + 8, n), new Float64Array(buf, body + 8 + n * 8, n));
          }
        }
      }
      off += length;
    }
    this.dispatchEvent(new Event("frame"));
  }

  _drawFrame() {
    this._raf = 0;
    const t0 = performance.now();
    let drew = 0;
    if (this._dirty.size) {
      // Draw dirty elements oldest first within a time budget per animation frame: what
      // does not fit stays dirty (first in line) for the next frame, so a heavy page
      // refreshes its charts less often instead of dropping frames.
      const dirty = this._dirty;
      this._dirty = new Set();
      let spent = 0;
      for (const el of dirty) {
        if (spent > this.budgetMs) {
          this._dirty.add(el);
          continue;
        }
        try {
          if (el.draw() !== false) {
            drew++;
            this.draws++;
          }
        } catch (err) {
          console.error(err);
        }
        spent = performance.now() - t0;
      }
      if (this._dirty.size && !this._raf) this._raf = requestAnimationFrame(this._onFrame);
    }
    const parsed = this._parseMs;
    const ms = parsed + (performance.now() - t0);
    this._parseMs = 0;
    // a frame counts when the page parsed or drew something in it (a frame that only
    // found nothing to draw is not one of the page's frames of work)
    if (drew || parsed > 0) {
      const p = this.perf;
      p.ms[p.count % PERF_SIZE] = ms;
      p.drew[p.count % PERF_SIZE] = drew;
      p.count++;
    }
  }

  _updateBadge() {
    if (typeof document === "undefined") return;
    if (!this._badge) {
      const b = document.createElement("div");
      b.className = "sd-connection";
      b.setAttribute("role", "status");
      b.setAttribute("aria-live", "polite");
      b.addEventListener("click", () => this.reconnectNow());
      this._badge = b;
      const attach = () => document.body.appendChild(b);
      if (document.body) attach();
      else document.addEventListener("DOMContentLoaded", attach, { once: true });
      this._badgeTimer = setInterval(() => this._updateBadge(), 1000);
    }
    const b = this._badge;
    b.dataset.state = this.state;
    document.documentElement.dataset.sdConnection = this.state;
    if (this.state === "open") {
      b.textContent = "live";
      b.title = "connected to the live server";
    } else if (this.state === "reconnecting") {
      const s = Math.ceil(this.retryIn());
      b.textContent = s > 0 ? `connection lost: reconnecting in ${s} s` : "reconnecting\u2026";
      b.title = "click to reconnect now";
    } else {
      b.textContent = "connecting\u2026";
    }
  }
}

// -- helpers shared by the elements ------------------------------------------------------

let shared = null;

/** The page's one client (created on first use). */
export function getClient() {
  if (!shared) {
    const meta = document.querySelector('meta[name="speeddata-ws"]');
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const url = meta ? meta.content : `${proto}//${location.host}/ws`;
    shared = new Client(url);
    shared._updateBadge();
    window.speeddata = shared; // for the console, the tests and the frame-budget benchmark
  }
  return shared;
}

/** Stylesheets of the elements, added once to the document. */
export function ensureStyles() {
  if (document.querySelector("link[data-speeddata]")) return;
  for (const href of ["../vendor/uPlot.min.css", "../css/speeddata.css"]) {
    const link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = new URL(href, import.meta.url).href;
    link.dataset.speeddata = "";
    document.head.appendChild(link);
  }
}

/** "30s", "5m", "1h", "250ms", "2d" or a bare number of seconds -> seconds. */
export function parseDuration(text, fallback) {
  if (text == null || text === "") return fallback;
  const m = /^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|min|h|d)?\s*$/.exec(String(text));
  if (!m) return fallback;
  const v = parseFloat(m[1]);
  const unit = m[2] || "s";
  const mult = { ms: 0.001, s: 1, m: 60, min: 60, h: 3600, d: 86400 }[unit];
  return v * mult;
}

/** Format a number with `digits` decimals (null: a sensible number of significant digits). */
export function formatNumber(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "\u2014";
  if (digits !== null && digits !== undefined && digits !== "") return v.toFixed(Number(digits));
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(3);
  return Number(v.toPrecision(6)).toString();
}

/** The REST API: JSON in and out; throws an Error with the server's reason on 4xx/5xx. */
export async function api(method, path, body) {
  const headers = {};
  const token = localStorage.getItem("speeddata-token");
  if (token) headers.Authorization = `Bearer ${token}`;
  let payload;
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const res = await fetch(path, { method, headers, body: payload });
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { message: text };
  }
  if (!res.ok) {
    const reason = (data && (data.error || data.message || data.reason)) || res.statusText;
    const err = new Error(typeof reason === "string" ? reason : JSON.stringify(reason));
    err.status = res.status;
    err.data = data;
    throw err;
  }
  return data;
}

/** Series colours: distinct in light and dark themes. */
export const PALETTE = [
  "#1f77b4", "#e6550d", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
];
export const PALETTE_DARK = [
  "#5ab0ff", "#ff9f40", "#5fd35f", "#ff6b6b", "#c39bff",
  "#d9a27a", "#ff9ee0", "#4fe3f0", "#e0e05a", "#bdbdbd",
];

export function darkMode() {
  return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
}

export function colorAt(i) {
  const p = darkMode() ? PALETTE_DARK : PALETTE;
  return p[i % p.length];
}
