// <sd-value signal="engine.rpm" digits="1" units stale-after="5s">
// The latest value of one signal. `units` shows the schema's units (or the attribute's
// text when it has one); `stale` is set when no new value arrives for `stale-after`.
// A string signal shows its latest text. Event out: "sd-value" {signal, time, value} when
// the shown value changes (at most once per frame).
import { formatNumber } from "./client.js";
import { LatestElement } from "./latest-element.js";

export class SdValue extends LatestElement {
  static observedAttributes = ["signal", "digits", "units", "stale-after"];

  constructor() {
    super();
    this._time = NaN;
    this._value = NaN;
    this._shown = null;
    this._num = null;
    this._units = null;
    this._onHello = () => this._render();
  }

  _build() {
    if (this._num) return;
    this._num = document.createElement("span");
    this._num.className = "sd-num";
    this._num.textContent = "\u2014";
    this._units = document.createElement("span");
    this._units.className = "sd-units";
    this.replaceChildren(this._num, this._units);
  }

  connectedCallback() {
    super.connectedCallback();
    this._render();
  }

  attributeChangedCallback(name, old, value) {
    if (old === value || !this.client) return;
    if (name === "signal") this._subscribe();
    this._shown = null;
    this._render();
  }

  /** The last value received (NaN before the first). */
  get value() {
    return this._value;
  }

  _subscribe() {
    this._sub?.close();
    this._time = NaN;
    this._value = NaN;
    this._text = undefined;
    this._shown = null;
    if (!this.signal) return;
    this._sub = this.client.subscribe({ signals: [this.signal], pixels: 0 }, this);
  }

  onLatest(sig, timeS, value) {
    this._time = timeS;
    this._value = value;
    this._at = performance.now();
    this.client.schedule(this);
  }

  /** String signals: the latest text (the server sends it when it changes). */
  onStrings(values) {
    const v = values && values[this.signal];
    if (!v) return;
    this._text = String(v[1]);
    this._time = v[0] / 1e9;
    this._at = performance.now();
    this.client.schedule(this);
  }

  draw() {
    const text = this._text !== undefined
      ? this._text
      : formatNumber(this._value, this.getAttribute("digits"));
    if (text !== this._shown) {
      this._num.textContent = text;
      this._shown = text;
      this.dispatchEvent(new CustomEvent("sd-value", {
        detail: { signal: this.signal, time: this._time, value: this._value },
      }));
    }
    this._checkStale();
  }

  _render() {
    const info = this.client?.signalInfo(this.signal);
    const attr = this.getAttribute("units");
    let units = "";
    if (attr !== null) units = attr || (info && info.signal.units) || "";
    this._units.textContent = units;
    if (info && info.signal.doc && !this.title) this.title = `${this.signal}: ${info.signal.doc}`;
  }
}

if (!customElements.get("sd-value")) customElements.define("sd-value", SdValue);
