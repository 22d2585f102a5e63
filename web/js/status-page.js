// The status page: the server's `status` messages (through <sd-status>) and GET /api/status
// every two seconds: relay counters per channel, rejected by reason, kernel drops,
// multicast loss, cache use and how far back the cache reaches.
import { api, getClient } from "./client.js";
import "./elements.js";

getClient();
const $ = (id) => document.getElementById(id);

function fmtBytes(n) {
  if (n == null) return "\u2014";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

function fmtSpan(s) {
  if (s == null || Number.isNaN(s)) return "\u2014";
  if (s < 120) return `${s.toFixed(0)} s`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} days`;
}

function cell(tr, text, cls) {
  const td = tr.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

/** Channel rows from whatever shape the server gives: a list or a name -> object map. */
function channelList(x) {
  if (!x) return [];
  if (Array.isArray(x)) return x;
  return Object.entries(x).map(([name, v]) => ({ name, ...v }));
}

function num(...xs) {
  for (const x of xs) if (typeof x === "number") return x;
  return undefined;
}

function renderRelay(st) {
  const relays = st.relays ? Object.entries(st.relays) : [];
  const rows = [];
  for (const [addr, r] of relays) {
    for (const ch of channelList(r.channels)) rows.push({ relay: addr, ch });
  }
  if (!rows.length) for (const ch of channelList(st.channels)) rows.push({ relay: "", ch });
  const table = document.createElement("table");
  table.className = "sd-table";
  const head = table.createTHead().insertRow();
  for (const h of ["channel", "relay", "datagrams/s", "records/s", "datagrams", "records", "rejected", "kernel drops", "multicast loss (server)"]) {
    const th = document.createElement("th");
    th.textContent = h;
    head.appendChild(th);
  }
  const body = table.createTBody();
  for (const { relay, ch } of rows) {
    const c = ch.counters || ch;
    const tr = body.insertRow();
    tr.dataset.channel = ch.name;
    cell(tr, ch.name);
    cell(tr, relay);
    cell(tr, fmtNum(num(ch.datagrams_per_s, ch.rates?.datagrams, c.datagrams_per_s)), "num");
    cell(tr, fmtNum(num(ch.records_per_s, ch.rate_hz, ch.rates?.records, c.records_per_s)), "num");
    cell(tr, fmtNum(num(c.datagrams)), "num");
    cell(tr, fmtNum(num(c.records)), "num");
    const rej = c.rejected || ch.rejected;
    let rejText = "0";
    let total = 0;
    if (rej && typeof rej === "object") {
      const parts = Object.entries(rej).filter(([, v]) => v > 0);
      total = parts.reduce((a, [, v]) => a + v, 0);
      rejText = parts.length ? parts.map(([k, v]) => `${k}: ${v}`).join(", ") : "0";
    } else if (typeof rej === "number") {
      total = rej;
      rejText = String(rej);
    }
    cell(tr, rejText, total > 0 ? "sd-bad" : "");
    const drops = num(c.kernel_drops, ch.kernel_drops, c.drops) ?? 0;
    cell(tr, String(drops), drops > 0 ? "sd-bad num" : "num");
    const srv = st.server?.channels?.[ch.name] || st.channels?.[ch.name] || {};
    const lost = num(srv.loss?.datagrams, ch.loss?.datagrams) ?? 0;
    cell(tr, `${lost} datagrams, ${num(srv.loss?.gaps, ch.loss?.gaps) ?? 0} gaps`, lost > 0 ? "sd-bad" : "");
  }
  $("relay").replaceChildren(table);
}

function fmtNum(v) {
  if (v == null) return "\u2014";
  return Number.isInteger(v) ? v.toLocaleString("en") : v.toFixed(1);
}

function renderCache(st) {
  const cache = st.cache || {};
  const dl = document.createElement("table");
  dl.className = "sd-table";
  const row = (k, v) => {
    const tr = dl.insertRow();
    cell(tr, k);
    cell(tr, v, "num");
  };
  const used = num(cache.bytes, cache.used_bytes, cache.used);
  const budget = num(cache.budget_bytes, cache.budget);
  row("used", fmtBytes(used));
  row("budget", fmtBytes(budget));
  if (used != null && budget) row("share of budget", `${((100 * used) / budget).toFixed(1)} %`);
  const oldest = num(cache.oldest_ns, cache.t_min_ns);
  if (oldest) row("oldest record", new Date(oldest / 1e6).toLocaleString());
  const reach = num(cache.reach_s, cache.span_s, cache.retention_s);
  if (reach != null) row("reaches back", fmtSpan(reach));
  const full = num(cache.full_in_s, cache.reach_at_rate_s, cache.reaches_s);
  if (full != null) row("reaches back when full, at the current rate", fmtSpan(full));
  for (const ch of channelList(cache.channels)) {
    const b = num(ch.bytes, ch.used_bytes);
    const span = ch.oldest_ns && ch.newest_ns ? (ch.newest_ns - ch.oldest_ns) / 1e9 : num(ch.span_s);
    row(`channel ${ch.name}`, `${fmtBytes(b)}${span != null ? `, ${fmtSpan(span)}` : ""}`);
  }
  $("cache").replaceChildren(dl);
}

async function refresh() {
  try {
    const st = await api("GET", "/api/status");
    $("error").textContent = "";
    renderRelay(st);
    renderCache(st);
    $("raw").textContent = JSON.stringify(st, null, 2);
  } catch (err) {
    $("error").textContent = `GET /api/status: ${err.message}`;
  }
}

refresh();
setInterval(refresh, 2000);
