// <sd-spark signal="engine.rpm" window="60s">
// A sparkline: the last `window` of one signal, min-max per pixel column, on a canvas
// (no axes; the overview page shows one per signal). Gaps stay gaps.
import { colorAt, ensureStyles, getClient, parseDuration } from "./client.js";
import { ColumnStore } from "./columns.js";

export class SdSpark extends HTMLElement {
  static observedAttributes = ["signal", "window", "color"];

  constructor() {
    super();
    this._sub = null;
    this._store = null;
    this._canvas = null;
    this._ctx = null;
    this._drawn = -1;
    this._range = new Float64Array(2);
    this._ro = null;
  }

  connectedCallback() {
    ensureStyles();
    if (!this._canvas) {
      this._canvas = document.createElement("canvas");
      this.replaceChildren(this._canvas);
      this._ctx = this._canvas.getContext("2d");
    }
    this.client = getClient();
    this._ro = new ResizeObserver(() => this._resize());
    this._ro.observe(this);
  }

  disconnectedCallback() {
    this._sub?.close();
    this._sub = null;
    this._ro?.disconnect();
  }

  attributeChangedCallback(name, old, value) {
    if (old !== value && this.client && name !== "color") this._subscribe();
  }

  _resize() {
    const w = Math.max(8, Math.round(this.clientWidth));
    const h = Math.max(8, Math.round(this.clientHeight));
    const dpr = devicePixelRatio || 1;
    this._canvas.width = Math.round(w * dpr);
    this._canvas.height = Math.round(h * dpr);
    if (w !== this._w) {
      this._w = w;
      this._subscribe();
    }
    this._drawn = -1;
    this.client.schedule(this);
  }

  _subscribe() {
    const signal = this.getAttribute("signal");
    if (!signal || !this._w) return;
    const req = {
      signals: [signal],
      pixels: this._w,
      window_s: parseDuration(this.getAttribute("window"), 60),
    };
    if (this._sub) this._sub.update(req);
    else this._sub = this.client.subscribe(req, this);
  }

  onSubscribed(msg) {
    this._store = new ColumnStore(1, msg.columns + 2, msg.width_ns / 1e9, true);
    this._drawn = -1;
  }

  onColumns(sig, firstCol, n, count, first, min, max, last) {
    this._store?.put(sig, firstCol, n, count, first, min, max, last);
    this.client.schedule(this);
  }

  onReset() {
    this._store = null;
  }

  draw() {
    const st = this._store;
    const ctx = this._ctx;
    if (!st || !ctx) return;
    const end = st.newestEnd();
    const now = Number.isNaN(end) ? this.client.serverNow() : end;
    const win = parseDuration(this.getAttribute("window"), 60);
    const t0 = now - win;
    if (st.version === this._drawn) return;
    this._drawn = st.version;
    const W = this._canvas.width;
    const H = this._canvas.height;
    ctx.clearRect(0, 0, W, H);
    const [j0, j1] = st.slotsIn(t0, now);
    const r = this._range;
    st.range(0, j0, j1, r);
    if (Number.isNaN(r[0])) return;
    let lo = r[0];
    let hi = r[1];
    if (hi === lo) {
      lo -= 1;
      hi += 1;
    }
    const ky = (H - 2) / (hi - lo);
    const kx = W / win;
    const y = st.y[0];
    const x = st.x;
    const cnt = st.count[0];
    const quietCols = Math.max(1, this.client.quietS(this.getAttribute("signal")) / st.widthS);
    ctx.beginPath();
    let pen = false;
    let empty = 0;
    for (let j = j0; j < j1; j++) {
      if (!(cnt[j] > 0)) {
        if (++empty > quietCols) pen = false;
        continue;
      }
      empty = 0;
      for (let k = 4 * j; k < 4 * j + 4; k++) {
        const px = (x[k] - t0) * kx;
        const py = H - 1 - (y[k] - lo) * ky;
        if (pen) ctx.lineTo(px, py);
        else ctx.moveTo(px, py);
        pen = true;
      }
    }
    ctx.lineWidth = devicePixelRatio || 1;
    ctx.strokeStyle = this.getAttribute("color") || colorAt(0);
    ctx.stroke();
  }
}

if (!customElements.get("sd-spark")) customElements.define("sd-spark", SdSpark);
