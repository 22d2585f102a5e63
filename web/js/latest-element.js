// The base of the one-signal elements (<sd-value>, <sd-state>): not an element itself.
// It subscribes to `signal` on connect, tidies up on disconnect, and keeps the `stale`
// attribute (no value and no channel activity for `stale-after`, or the socket not
// open) and the `error` attribute (the server refused the subscription) up to date.
// A subclass makes its children in `_build()`, subscribes in `_subscribe()` and sets
// `this._at = performance.now()` whenever a value arrives.
import { ensureStyles, getClient, parseDuration } from "./client.js";

export class LatestElement extends HTMLElement {
  constructor() {
    super();
    this._sub = null;
    this._at = 0; // performance.now() of the last value
    this._timer = 0;
  }

  connectedCallback() {
    ensureStyles();
    this._build();
    this.client = getClient();
    this.client.addEventListener("hello", this._onHello);
    this._subscribe();
    this._timer = setInterval(() => this._checkStale(), 1000);
  }

  disconnectedCallback() {
    this._sub?.close();
    this._sub = null;
    this.client?.removeEventListener("hello", this._onHello);
    clearInterval(this._timer);
  }

  get signal() {
    return this.getAttribute("signal") || "";
  }

  onReset() {
    this._at = 0;
    this._checkStale();
  }

  onError(message) {
    this.title = message;
    this.setAttribute("error", "");
  }

  _checkStale() {
    const limit = parseDuration(this.getAttribute("stale-after"), 5) * 1000;
    const info = this.client?.signalInfo(this.signal);
    const chActive = info ? this.client.lastActive.get(info.channel.name) || 0 : 0;
    const last = Math.max(this._at, chActive);
    const stale = this.client?.state !== "open" || !last || performance.now() - last > limit;
    this.toggleAttribute("stale", stale);
  }
}
