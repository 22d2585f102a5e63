// <sd-status channels="engine power" compact>
// Relay and loss health from the server's `status` messages: connection, per channel
// rate, records, loss seen by the server (lost datagrams, gaps), the relay's rejected
// datagrams and kernel drops, and how long since the last record.
// `channels` limits the rows (all when absent); `compact` shows one line of badges.
// Event out: "sd-health" {ok, problems} when the health changes.
import { ensureStyles, getClient } from "./client.js";

function fmtRate(r) {
  if (r == null) return "\u2014";
  if (r >= 1e4) return `${(r / 1e3).toFixed(1)} k/s`;
  return `${r.toFixed(r < 10 ? 1 : 0)} /s`;
}

export class SdStatus extends HTMLElement {
  static observedAttributes = ["channels", "compact"];

  constructor() {
    super();
    this._onEvent = () => this.client.schedule(this);
    this._health = null;
  }

  connectedCallback() {
    ensureStyles();
    this.client = getClient();
    for (const t of ["status", "state", "hello"]) this.client.addEventListener(t, this._onEvent);
    this.client.schedule(this);
  }

  disconnectedCallback() {
    for (const t of ["status", "state", "hello"]) this.client.removeEventListener(t, this._onEvent);
  }

  attributeChangedCallback() {
    if (this.client) this.client.schedule(this);
  }

  draw() {
    const c = this.client;
    const st = c.status;
    const filter = (this.getAttribute("channels") || "").trim().split(/\s+/).filter(Boolean);
    const names = [...c.channels.keys()].filter((n) => !filter.length || filter.includes(n));
    const problems = [];
    if (c.state !== "open") problems.push(`server: ${c.state}`);
    // the relay's own counters (its stats message, passed on in `status.relays`)
    const relayCounters = new Map();
    for (const r of Object.values((st && st.relays) || {})) {
      const list = Array.isArray(r && r.channels) ? r.channels : [];
      for (const ch of list) if (ch && ch.name) relayCounters.set(ch.name, ch.counters || {});
    }
    const rows = names.map((name) => {
      const s = (st && st.channels && st.channels[name]) || {};
      const ch = c.channels.get(name) || {};
      const loss = s.loss || ch.loss || {};
      const age = s.last_ns && st.now_ns ? (st.now_ns - s.last_ns) / 1e9 : null;
      const silent = age === null || age > 5;
      const rc = relayCounters.get(name) || {};
      if (loss.datagrams > 0) problems.push(`${name}: ${loss.datagrams} datagrams lost`);
      if (rc.kernel_drops > 0) problems.push(`${name}: ${rc.kernel_drops} kernel drops`);
      if (silent) problems.push(`${name}: no data`);
      return { name, s, loss, age, silent, rc, rate: s.rate_hz ?? ch.rate_hz };
    });
    const ok = problems.length === 0;
    this.toggleAttribute("ok", ok);
    const compact = this.hasAttribute("compact");
    const frag = document.createDocumentFragment();
    if (compact) {
      const span = document.createElement("span");
      span.className = ok ? "sd-ok" : "sd-bad";
      span.textContent = ok ? `\u25CF all ${rows.length} channels healthy` : `\u25CF ${problems.join("; ")}`;
      frag.append(span);
    } else {
      const table = document.createElement("table");
      table.className = "sd-table";
      const head = table.createTHead().insertRow();
      for (const h of ["channel", "rate", "records", "lost datagrams", "gaps", "rejected",
        "kernel drops", "last record"]) {
        const th = document.createElement("th");
        th.textContent = h;
        head.appendChild(th);
      }
      const body = table.createTBody();
      for (const r of rows) {
        const tr = body.insertRow();
        tr.dataset.channel = r.name;
        const cells = [
          r.name,
          fmtRate(r.rate),
          r.s.records ?? "\u2014",
          r.loss.datagrams ?? 0,
          r.loss.gaps ?? 0,
          r.rc.rejected ?? "\u2014",
          r.rc.kernel_drops ?? "\u2014",
          r.age === null ? "\u2014" : `${r.age.toFixed(1)} s ago`,
        ];
        cells.forEach((v, i) => {
          const td = tr.insertCell();
          td.textContent = String(v);
          if (i >= 3 && i <= 6) td.className = Number(v) > 0 ? "sd-bad" : "sd-ok";
          if (i === 7) td.className = r.silent ? "sd-warn" : "";
        });
      }
      const conn = document.createElement("div");
      conn.className = c.state === "open" ? "sd-ok" : "sd-bad";
      const clients = st && st.clients != null ? `, ${st.clients} client(s)` : "";
      conn.textContent = `server: ${c.state}${clients}`;
      frag.append(conn, table);
    }
    this.replaceChildren(frag);
    const key = problems.join("|");
    if (key !== this._health) {
      this._health = key;
      this.dispatchEvent(new CustomEvent("sd-health", { detail: { ok, problems } }));
    }
  }
}

if (!customElements.get("sd-status")) customElements.define("sd-status", SdStatus);
