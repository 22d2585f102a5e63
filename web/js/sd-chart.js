// <sd-chart signals="engine.rpm engine.torque" window="30s" ymin="0" ymax="5000"
//           title="Engine">
// A stripchart drawn with uPlot from the server's M4 columns (at most four points per pixel
// column and signal, whatever the source rate). Signals may be globs ("power.*"). Without
// ymin/ymax each unit gets its own autoscaled axis; with them the range is fixed (give one
// of them to fix one end). Lost data is drawn as a gap, never as a line across.
//
// Pause (button or drag-select) stops scrolling; then pan (buttons, shift+wheel) and zoom
// (wheel, buttons) read older data from the server, and from the cache beyond its window.
// A selected range can be kept (a tag), exported to HDF5 (with progress, then a download)
// or to CSV of the visible signals.
//
// Events out: "sd-select" {start, end} (seconds) when a range is selected, "sd-keep"
// {tag}, "sd-export" {id, url, format} when an export is ready, "sd-pause" {paused}.
import uPlot from "../vendor/uPlot.esm.js";
import { api, colorAt, darkMode, ensureStyles, formatNumber, getClient, parseDuration } from "./client.js";
import { ColumnStore } from "./columns.js";

const NS = 1e9;

export class SdChart extends HTMLElement {
  static observedAttributes = ["signals", "window", "ymin", "ymax", "title"];

  constructor() {
    super();
    this._sub = null;
    this._u = null;
    this._store = null;
    this._signals = [];
    this._gaps = [];
    this._paused = false;
    this._view = null; // [t0, t1] seconds while paused
    this._pending = 0; // debounce timer of a range request
    this._drawn = -1; // store version last drawn
    this._pixels = 0;
    this._range = new Float64Array(2);
    this._data = null;
    this._ro = null;
    this._mq = null;
    this._selection = null;
    this._built = false;
    this._onTheme = () => this._rebuild();
    this._onState = (e) => {
      if (e.detail !== "open") this._note("");
    };
  }

  // -- lifecycle ------------------------------------------------------------------------

  connectedCallback() {
    ensureStyles();
    this.client = getClient();
    if (!this._built) this._buildDom();
    this._ro = new ResizeObserver(() => {
      this._sizeDirty = true;
      this.client.schedule(this);
    });
    this._ro.observe(this);
    this._mq = window.matchMedia("(prefers-color-scheme: dark)");
    this._mq.addEventListener("change", this._onTheme);
    this.client.addEventListener("state", this._onState);
    this._subscribe();
  }

  disconnectedCallback() {
    this._sub?.close();
    this._sub = null;
    this._ro?.disconnect();
    this._mq?.removeEventListener("change", this._onTheme);
    this.client.removeEventListener("state", this._onState);
    clearTimeout(this._pending);
    clearTimeout(this._tickTimer);
    this._tickTimer = 0;
    this._u?.destroy();
    this._u = null;
  }

  attributeChangedCallback(name, old, value) {
    if (old === value || !this.client) return;
    if (name === "title") {
      this._title.textContent = value || this._signals.join(", ");
    } else if (name === "signals" || name === "window") {
      this._paused = false;
      this._view = null;
      this._subscribe();
    } else {
      this._rebuild();
    }
  }

  get signals() {
    return (this.getAttribute("signals") || "").trim().split(/\s+/).filter(Boolean);
  }

  get windowS() {
    return parseDuration(this.getAttribute("window"), 30);
  }

  /** The resolved signals (from the server's `subscribed`). */
  get resolvedSignals() {
    return this._signals.slice();
  }

  get paused() {
    return this._paused;
  }

  /** The shown time range [t0, t1] in seconds since the epoch. */
  get view() {
    if (this._paused && this._view) return this._view.slice();
    // live: the right edge is the newest data's column (data time, so a replay of old
    // data shows too), the server's clock before any data
    const end = this._store ? this._store.newestEnd() : NaN;
    const now = Number.isNaN(end) ? this.client.serverNow() : end;
    return [now - this.windowS, now];
  }

  // -- DOM ------------------------------------------------------------------------------

  _buildDom() {
    this._built = true;
    const bar = document.createElement("div");
    bar.className = "sd-chart-bar";
    this._title = document.createElement("span");
    this._title.className = "sd-chart-title";
    this._title.textContent = this.getAttribute("title") || this.signals.join(", ");
    this._noteEl = document.createElement("span");
    this._noteEl.className = "sd-chart-note";
    const button = (text, title, fn, cls) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = text;
      b.title = title;
      if (cls) b.className = cls;
      b.addEventListener("click", fn);
      bar.appendChild(b);
      return b;
    };
    bar.append(this._title, this._noteEl);
    button("\u25C0", "back half a window", () => this.pan(-0.5), "sd-back");
    button("\u25B6", "forward half a window", () => this.pan(0.5), "sd-fwd");
    button("\u2212", "zoom out", () => this.zoom(2), "sd-zoomout");
    button("+", "zoom in", () => this.zoom(0.5), "sd-zoomin");
    this._pauseBtn = button("pause", "pause: stop scrolling", () => this.togglePause(), "sd-pause");
    this._plot = document.createElement("div");
    this._plot.className = "sd-chart-plot";
    this.replaceChildren(bar, this._plot);
    this._bar = bar;
    this._plot.addEventListener("wheel", (e) => this._wheel(e), { passive: false });
  }

  _note(text) {
    if (this._noteEl.textContent !== text) this._noteEl.textContent = text;
  }

  _plotWidth() {
    if (this._u) return Math.max(16, Math.round(this._u.bbox.width / devicePixelRatio));
    return Math.max(16, this.clientWidth - 70);
  }

  _sizes() {
    const legend = this._u ? this._u.root.querySelector(".u-legend") : null;
    const legendH = legend ? legend.offsetHeight : 24;
    const barH = this._bar.offsetHeight;
    this._plot.style.top = `${barH}px`;
    return {
      width: Math.max(100, this.clientWidth - 2),
      height: Math.max(60, this.clientHeight - barH - legendH - 4),
    };
  }

  _resized() {
    this._sizeDirty = false;
    if (!this._u) return;
    const { width, height } = this._sizes();
    if (width !== this._u.width || height !== this._u.height) this._u.setSize({ width, height });
    // a different width needs a different column grid: ask again (debounced)
    const px = this._plotWidth();
    if (Math.abs(px - this._pixels) > Math.max(8, 0.1 * this._pixels)) this._requestLater(150);
    this._drawn = -1;
  }

  // -- subscription ---------------------------------------------------------------------

  _request() {
    const pixels = this._plotWidth();
    this._pixels = pixels;
    if (this._paused && this._view) {
      const [t0, t1] = this._view;
      return { signals: this.signals, pixels, range_ns: [Math.round(t0 * NS), Math.round(t1 * NS)] };
    }
    return { signals: this.signals, pixels, window_s: this.windowS };
  }

  _subscribe() {
    clearTimeout(this._pending);
    if (!this.signals.length) return;
    const req = this._request();
    this._rangeReq = req.range_ns || null;
    if (this._sub) this._sub.update(req);
    else this._sub = this.client.subscribe(req, this);
  }

  _requestLater(ms) {
    clearTimeout(this._pending);
    this._pending = setTimeout(() => this._subscribe(), ms);
  }

  onSubscribed(msg) {
    const signals = msg.signals || [];
    const changed = signals.join(" ") !== this._signals.join(" ");
    this._signals = signals;
    const widthS = msg.width_ns / NS;
    const live = !!msg.live && !this._rangeReq;
    const store = new ColumnStore(signals.length, msg.columns + (live ? 2 : 1), widthS, live);
    if (this._rangeReq) store.setBase(Math.floor(this._rangeReq[0] / msg.width_ns));
    this._store = store;
    this._gaps = signals.map(() => []);
    this._data = [store.x, ...store.y];
    if (!this.getAttribute("title")) this._title.textContent = signals.join(", ");
    this.removeAttribute("error");
    this._note(this._paused ? "paused" : "");
    if (changed || !this._u) this._rebuild();
    else this._u.setData(this._data, false);
    this._drawn = -1;
    this.client.schedule(this);
  }

  onColumns(sig, firstCol, n, count, first, min, max, last) {
    if (!this._store) return;
    this._store.put(sig, firstCol, n, count, first, min, max, last);
    this.client.schedule(this);
  }

  onGaps(sig, starts, ends) {
    const list = this._gaps[sig];
    if (!list) return;
    outer: for (let i = 0; i < starts.length; i++) {
      for (const g of list) if (g[0] === starts[i]) continue outer;
      list.push([starts[i], ends[i]]);
    }
    // forget gaps that scrolled out of what the store holds
    const ext = this._store && this._store.extent();
    if (ext && list.length > 64) {
      const keep = list.filter((g) => g[1] >= ext[0]);
      list.length = 0;
      list.push(...keep);
    }
    this._drawn = -1;
    this.client.schedule(this);
  }

  onProgress(done) {
    this._note(`reading ${Math.round(done * 100)} %`);
  }

  onComplete() {
    this._note(this._paused ? "paused" : "");
  }

  onError(message) {
    this.setAttribute("error", message);
    this._note(message);
  }

  onReset() {
    this._note("waiting for the server\u2026");
  }

  // -- drawing --------------------------------------------------------------------------

  _scales() {
    // one y scale per unit (signals without units share one)
    const keys = [];
    const of = [];
    for (const name of this._signals) {
      const info = this.client.signalInfo(name);
      const units = (info && info.signal.units) || "";
      let k = keys.indexOf(units);
      if (k < 0) {
        keys.push(units);
        k = keys.length - 1;
      }
      of.push(k);
    }
    return { units: keys, of };
  }

  _rebuild() {
    if (!this._built || !this._signals.length) return;
    this._u?.destroy();
    this._u = null;
    const dark = darkMode();
    const css = getComputedStyle(this);
    const axisColor = css.getPropertyValue("--sd-axis").trim() || (dark ? "#8b949e" : "#57606a");
    const gridColor = css.getPropertyValue("--sd-grid").trim() || "rgba(128,128,128,0.15)";
    const { units, of } = this._scales();
    this._scaleOf = of;
    this._units = units;
    const digits = this.getAttribute("digits");
    const scales = { x: { time: true, auto: false } };
    units.forEach((u, i) => {
      scales[`y${i}`] = { auto: false };
    });
    const series = [
      {
        value: (u, v) => (v == null ? "\u2014" : new Date(v * 1000).toLocaleTimeString()),
      },
    ];
    this._signals.forEach((name, i) => {
      const info = this.client.signalInfo(name);
      const unit = (info && info.signal.units) || "";
      series.push({
        label: unit ? `${name} [${unit}]` : name,
        scale: `y${of[i]}`,
        stroke: colorAt(i),
        width: 1.25,
        points: { show: false },
        spanGaps: false,
        value: (u, v) => formatNumber(v, digits),
        gaps: (u, sidx) => this._gapPixels(u, sidx - 1),
      });
    });
    const axes = [
      { stroke: axisColor, space: 70, grid: { stroke: gridColor, width: 1 }, ticks: { stroke: gridColor } },
    ];
    units.forEach((unit, i) => {
      if (i > 1) return;
      axes.push({
        scale: `y${i}`,
        side: i === 0 ? 3 : 1,
        label: unit || undefined,
        labelSize: unit ? 18 : 0,
        stroke: axisColor,
        grid: { show: i === 0, stroke: gridColor, width: 1 },
        ticks: { stroke: gridColor },
        size: 56,
      });
    });
    const { width, height } = this._sizes();
    const opts = {
      width,
      height,
      pxAlign: 0,
      scales,
      series,
      axes,
      legend: { live: true },
      cursor: { drag: { x: true, y: false, setScale: false }, points: { show: false } },
      hooks: { setSelect: [(u) => this._selected(u)] },
    };
    this._u = new uPlot(opts, this._data || [[]], this._plot);
    // the legend's height is known now: fit the plot into the box
    const s2 = this._sizes();
    if (s2.height !== height) this._u.setSize(s2);
    this._sizeDirty = true;
    this._drawn = -1;
    this.client.schedule(this);
  }

  /** Pixel intervals (canvas pixels) to leave out of series `s`'s line. */
  _gapPixels(u, s) {
    const out = [];
    const st = this._store;
    if (!st) return out;
    const xmin = u.scales.x.min;
    const xmax = u.scales.x.max;
    // server-reported loss
    for (const [a, b] of this._gaps[s] || []) {
      if (b < xmin || a > xmax) continue;
      const pa = Math.round(u.valToPos(a, "x", true));
      const pb = Math.round(u.valToPos(b, "x", true));
      if (pb > pa) out.push([pa, pb]);
    }
    // columns without data between columns with data, when longer than the channel's
    // usual silence between records (a 1 Hz signal leaves most 100 ms columns empty)
    const quiet = Math.max(this.client.quietS(this._signals[s]), 1.5 * st.widthS);
    const cnt = st.count[s];
    const [j0, j1] = st.slotsIn(xmin, xmax);
    let lastData = -1;
    for (let j = Math.max(0, j0 - 1); j < Math.min(st.n, j1 + 1); j++) {
      if (cnt[j] > 0) {
        if (lastData >= 0 && j - lastData > 1 && (j - lastData - 1) * st.widthS > quiet) {
          const pa = Math.round(u.valToPos(st.x[4 * lastData + 3], "x", true));
          const pb = Math.round(u.valToPos(st.x[4 * j], "x", true));
          if (pb > pa) out.push([pa, pb]);
        }
        lastData = j;
      }
    }
    out.sort((p, q) => p[0] - q[0]);
    return out;
  }

  draw() {
    if (this._sizeDirty) this._resized();
    const u = this._u;
    const st = this._store;
    if (!u || !st) return;
    const [t0, t1] = this.view;
    if (st.version === this._drawn && this._lastT1 === t1) return false;
    if (!this._paused && this._drawn !== -1) {
      // live: redraw when the time axis has moved by a pixel, not for every frame of data
      // (the newest column waits at most one pixel's time); check again next frame
      const pxS = (t1 - t0) / this._plotWidth();
      const tick = Math.floor(t1 / pxS);
      if (tick === this._tick) {
        if (!this._tickTimer) {
          const wait = Math.max(1, ((tick + 1) * pxS - t1) * 1000);
          this._tickTimer = setTimeout(() => {
            this._tickTimer = 0;
            this.client.schedule(this);
          }, wait);
        }
        return false;
      }
      this._tick = tick;
    }
    this._drawn = st.version;
    this._lastT1 = t1;
    const [j0, j1] = st.slotsIn(t0, t1);
    const fixedLo = parseFloat(this.getAttribute("ymin"));
    const fixedHi = parseFloat(this.getAttribute("ymax"));
    const of = this._scaleOf;
    const nScales = this._units.length;
    const r = this._range;
    u.batch(() => {
      u.setData(this._data, false);
      u.setScale("x", { min: t0, max: t1 });
      for (let k = 0; k < nScales; k++) {
        let lo = Infinity;
        let hi = -Infinity;
        for (let s = 0; s < of.length; s++) {
          if (of[s] !== k || !u.series[s + 1].show) continue;
          st.range(s, j0, j1, r);
          if (r[0] < lo) lo = r[0];
          if (r[1] > hi) hi = r[1];
        }
        if (lo === Infinity) {
          lo = 0;
          hi = 1;
        }
        if (!Number.isNaN(fixedLo)) lo = fixedLo;
        if (!Number.isNaN(fixedHi)) hi = fixedHi;
        if (Number.isNaN(fixedLo) || Number.isNaN(fixedHi)) {
          const pad = hi > lo ? (hi - lo) * 0.05 : Math.abs(hi) * 0.05 || 1;
          if (Number.isNaN(fixedLo)) lo -= pad;
          if (Number.isNaN(fixedHi)) hi += pad;
        }
        u.setScale(`y${k}`, { min: lo, max: hi });
      }
    });
  }

  // -- pause, pan, zoom -------------------------------------------------------------------

  togglePause() {
    if (this._paused) this.resume();
    else this.pause();
  }

  pause() {
    if (this._paused) return;
    this._view = this.view;
    this._paused = true;
    this.setAttribute("paused", "");
    this._pauseBtn.textContent = "\u25B6 live";
    this._pauseBtn.title = "back to live";
    this._note("paused");
    this._sub?.pause();
    this.dispatchEvent(new CustomEvent("sd-pause", { detail: { paused: true } }));
  }

  resume() {
    this._paused = false;
    this._view = null;
    this.removeAttribute("paused");
    this._pauseBtn.textContent = "pause";
    this._pauseBtn.title = "pause: stop scrolling";
    this._closeSelection();
    this._note("");
    this._subscribe();
    this.dispatchEvent(new CustomEvent("sd-pause", { detail: { paused: false } }));
  }

  /** Show [t0, t1] (seconds): pauses, then reads that range from the server. */
  showRange(t0, t1) {
    if (!(t1 > t0)) return;
    if (!this._paused) this.pause();
    this._view = [t0, t1];
    this._drawn = -1;
    this.client.schedule(this);
    this._requestLater(120);
  }

  pan(fraction) {
    const [t0, t1] = this.view;
    const d = (t1 - t0) * fraction;
    const now = this.client.serverNow();
    if (this._paused && d > 0 && t1 + d >= now) {
      this.resume();
      return;
    }
    this.showRange(t0 + d, t1 + d);
  }

  zoom(factor, centerFrac = 0.5) {
    const [t0, t1] = this.view;
    const c = t0 + (t1 - t0) * centerFrac;
    this.showRange(c - (c - t0) * factor, c + (t1 - c) * factor);
  }

  _wheel(e) {
    if (!this._u || !(this._paused || e.ctrlKey || e.shiftKey)) return;
    e.preventDefault();
    const rect = this._u.over.getBoundingClientRect();
    const frac = Math.min(1, Math.max(0, (e.clientX - rect.left) / rect.width));
    if (e.shiftKey) this.pan(Math.sign(e.deltaY || e.deltaX) * 0.2);
    else this.zoom(e.deltaY > 0 ? 1.25 : 0.8, frac);
  }

  // -- selection: zoom, keep, export ----------------------------------------------------

  _selected(u) {
    if (u.select.width < 3) return;
    const a = u.posToVal(u.select.left, "x");
    const b = u.posToVal(u.select.left + u.select.width, "x");
    this.select(a, b);
  }

  /** Select [t0, t1] seconds (as a drag does): pauses and opens the selection bar. */
  select(t0, t1) {
    if (!this._paused) this.pause();
    this._selection = [t0, t1];
    this.dispatchEvent(new CustomEvent("sd-select", { detail: { start: t0, end: t1 } }));
    this._openSelection();
  }

  _closeSelection() {
    this._selectEl?.remove();
    this._selectEl = null;
    this._selection = null;
    if (this._u) this._u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
  }

  _channels() {
    const names = new Set();
    for (const s of this._signals) {
      const info = this.client.signalInfo(s);
      if (info) names.add(info.channel.name);
    }
    return [...names];
  }

  _openSelection() {
    this._selectEl?.remove();
    const [t0, t1] = this._selection;
    const box = document.createElement("div");
    box.className = "sd-select";
    const fmt = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false }) +
      `.${String(Math.floor((t % 1) * 1000)).padStart(3, "0")}`;
    const label = document.createElement("span");
    label.textContent = `${fmt(t0)} \u2013 ${fmt(t1)} (${(t1 - t0).toFixed(2)} s)`;
    const mk = (text, cls, fn) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = text;
      b.className = cls;
      b.addEventListener("click", fn);
      return b;
    };
    const stamp = new Date(t0 * 1000).toISOString().replace(/[-:]/g, "").slice(0, 15);
    const name = document.createElement("input");
    name.className = "sd-tag-name";
    name.placeholder = "tag name";
    name.value = `keep-${stamp}`;
    const note = document.createElement("input");
    note.className = "sd-tag-note";
    note.placeholder = "note";
    const msg = document.createElement("span");
    msg.className = "sd-msg";
    const prog = document.createElement("progress");
    prog.max = 1;
    prog.hidden = true;
    const keepBtn = mk("Keep", "sd-keep", () => this._keep(name.value, note.value, msg, h5Btn));
    const h5Btn = mk("Export HDF5", "sd-export-h5", () => this._export("hdf5", name.value, msg, prog));
    h5Btn.disabled = true;
    h5Btn.title = "keep the range first";
    box.append(
      label,
      mk("Zoom", "sd-zoom-sel", () => {
        this._closeSelection();
        this.showRange(t0, t1);
      }),
      name,
      note,
      keepBtn,
      h5Btn,
      mk("Export CSV", "sd-export-csv", () => this._export("csv", null, msg, prog)),
      mk("\u00D7", "sd-close", () => this._closeSelection()),
      prog,
      msg,
    );
    this.appendChild(box);
    this._selectEl = box;
  }

  _selectionNs() {
    const [t0, t1] = this._selection;
    // a tag cannot end in the future or beyond what the cache holds yet
    const limit = this.client.serverNow() - 0.5;
    return [Math.round(t0 * NS), Math.round(Math.min(t1, limit) * NS)];
  }

  async _keep(name, note, msg, h5Btn) {
    const [start, end] = this._selectionNs();
    msg.className = "sd-msg";
    msg.textContent = "keeping\u2026";
    try {
      const tag = await api("POST", "/api/tags", {
        name, start_ns: start, end_ns: end, channels: this._channels(), note,
      });
      this._tag = (tag && tag.name) || name;
      msg.textContent = `kept as ${this._tag}`;
      h5Btn.disabled = false;
      h5Btn.title = "";
      this.dispatchEvent(new CustomEvent("sd-keep", { detail: { tag: tag || { name } } }));
    } catch (err) {
      msg.className = "sd-msg sd-error";
      msg.textContent = err.message;
    }
  }

  async _export(format, tag, msg, prog) {
    msg.className = "sd-msg";
    msg.textContent = "exporting\u2026";
    prog.hidden = false;
    prog.value = 0;
    try {
      let body;
      if (tag && format === "hdf5") {
        body = { tag };
      } else {
        const [start, end] = this._selectionNs();
        body = { start_ns: start, end_ns: end, channels: this._channels() };
      }
      const job = await api("POST", "/api/exports", body);
      const id = job.id;
      let state = job;
      while (state.state !== "done") {
        if (state.state === "failed" || state.error) throw new Error(state.error || "export failed");
        if (typeof state.done === "number") prog.value = state.done;
        await new Promise((r) => setTimeout(r, 250));
        state = await api("GET", `/api/exports/${encodeURIComponent(id)}`);
      }
      prog.value = 1;
      let url = state.file || `/api/exports/${encodeURIComponent(id)}/file`;
      if (format === "csv") url += `?format=csv&signals=${encodeURIComponent(this._signals.join(","))}`;
      const a = document.createElement("a");
      a.href = url;
      a.download = `${tag || `speeddata-${id}`}.${format === "csv" ? "csv" : "h5"}`;
      a.textContent = "download";
      msg.replaceChildren("done: ", a);
      this.dispatchEvent(new CustomEvent("sd-export", { detail: { id, url, format } }));
      a.click();
    } catch (err) {
      msg.className = "sd-msg sd-error";
      msg.textContent = err.message;
    } finally {
      prog.hidden = true;
    }
  }
}

if (!customElements.get("sd-chart")) customElements.define("sd-chart", SdChart);
