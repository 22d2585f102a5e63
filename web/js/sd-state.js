// <sd-state signal="engine.state" colors="IDLE:gray RUN:green FAULT:red" stale-after="5s">
// An enum signal's current symbol (from the schema's symbols in `hello`). The symbol is
// also set as the `state` attribute, so a page can style it: sd-state[state="FAULT"] {...}.
// Event out: "sd-state" {signal, time, index, symbol} when it changes.
import { LatestElement } from "./latest-element.js";

const DEFAULT_COLORS = {
  FAULT: "#cf222e", ERROR: "#cf222e", ALARM: "#cf222e", FAIL: "#cf222e",
  WARN: "#b35900", WARNING: "#b35900",
  RUN: "#1a7f37", RUNNING: "#1a7f37", OK: "#1a7f37", ON: "#1a7f37",
  IDLE: "#57606a", OFF: "#57606a", STOP: "#57606a",
};
const CYCLE = ["#1f6feb", "#8250df", "#bf3989", "#0a7f8c", "#7d4e00"];

export class SdState extends LatestElement {
  static observedAttributes = ["signal", "colors", "stale-after"];

  constructor() {
    super();
    this._index = -1;
    this._time = NaN;
    this._shown = -2;
    this._sym = null;
    this._onHello = () => {
      this._shown = -2;
      this.client.schedule(this);
    };
  }

  _build() {
    if (this._sym) return;
    this._sym = document.createElement("span");
    this._sym.className = "sd-sym";
    this._sym.textContent = "\u2014";
    this.replaceChildren(this._sym);
  }

  attributeChangedCallback(name, old, value) {
    if (old === value || !this.client) return;
    if (name === "signal") this._subscribe();
    this._shown = -2;
    this.client.schedule(this);
  }

  /** The current symbol ("" before the first value). */
  get symbol() {
    return this._symbols()[this._index] ?? "";
  }

  _symbols() {
    const info = this.client?.signalInfo(this.signal);
    return (info && info.signal.symbols) || [];
  }

  _subscribe() {
    this._sub?.close();
    this._index = -1;
    this._shown = -2;
    if (!this.signal) return;
    this._sub = this.client.subscribe({ signals: [this.signal], pixels: 0 }, this);
  }

  onLatest(sig, timeS, value) {
    this._index = Number.isNaN(value) ? -1 : Math.round(value);
    this._time = timeS;
    this._at = performance.now();
    this.client.schedule(this);
  }

  _color(symbol, index) {
    const custom = this.getAttribute("colors");
    if (custom) {
      for (const pair of custom.trim().split(/\s+/)) {
        const [k, v] = pair.split(":");
        if (k === symbol && v) return v;
      }
    }
    return DEFAULT_COLORS[symbol.toUpperCase()] || CYCLE[index % CYCLE.length];
  }

  draw() {
    this._checkStale();
    if (this._index === this._shown) return;
    this._shown = this._index;
    const symbols = this._symbols();
    const symbol = this._index < 0 ? "" : symbols[this._index] ?? String(this._index);
    this._sym.textContent = symbol || "\u2014";
    if (symbol) {
      this.setAttribute("state", symbol);
      this._sym.style.setProperty("--sd-state-color", this._color(symbol, this._index));
    } else {
      this.removeAttribute("state");
      this._sym.style.removeProperty("--sd-state-color");
    }
    this.dispatchEvent(new CustomEvent("sd-state", {
      detail: { signal: this.signal, time: this._time, index: this._index, symbol },
    }));
  }
}

if (!customElements.get("sd-state")) customElements.define("sd-state", SdState);
