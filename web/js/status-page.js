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

function rejectedOf(c, reasons) {
  // the relay counts rejects in `rejected`, and per reason in the channel's `rejects`
  // ({reason: count}, docs/relay-internals.md); older relays: `rejected_<reason>` keys
  const parts = [];
  if (reasons && typeof reasons === "object") {
    for (const [k, v] of Object.entries(reasons)) if (typeof v === "number" && v > 0) parts.push(`${k}: ${v}`);
  }
  let total = typeof c.rejected === "number" ? c.rejected : 0;
  if (c.rejected && typeof c.rejected === "object") {
    for (const [k, v] of Object.entries(c.rejected)) if (v > 0) parts.push(`${k}: ${v}`);
    total = Object.values(c.rejected).reduce((a, v) => a + v, 0);
  }
  for (const [k, v] of Object.entries(c)) {
    if (k.startsWith("rejected_") && typeof v === "number" && v > 0) parts.push(`${k.slice(9)}: ${v}`);
  }
  return { total, text: parts.length ? `${total} (${parts.join(", ")})` : String(total) };
}

function renderRelay(st) {
  const relay = st.relay || {};
  const relayChannels = channelList(relay.channels);
  const server = st.channels || {};
  const names = [...new Set([...relayChannels.map((c) => c.name), ...Object.keys(server)])];
  const table = document.createElement("table");
  table.className = "sd-table";
  const head = table.createTHead().insertRow();
  for (const h of ["channel", "port", "records/s (server)", "datagrams", "records", "rejected",
    "kernel drops", "multicast loss (server)", "cache", "cache reaches back"]) {
    const th = document.createElement("th");
    th.textContent = h;
    head.appendChild(th);
  }
  const body = table.createTBody();
  const now = Date.now() * 1e6;
  for (const name of names) {
    const rc = relayChannels.find((c) => c.name === name) || {};
    const c = rc.counters || {};
    const srv = server[name] || {};
    const tr = body.insertRow();
    tr.dataset.channel = name;
    cell(tr, name);
    cell(tr, rc.port ?? "\u2014", "num");
    cell(tr, fmtNum(num(srv.rate_hz)), "num");
    cell(tr, fmtNum(num(c.datagrams)), "num");
    cell(tr, fmtNum(num(c.records)), "num");
    const rej = rejectedOf(c, rc.rejects);
    cell(tr, rej.text, rej.total > 0 ? "sd-bad num" : "num");
    const drops = num(c.kernel_drops) ?? 0;
    cell(tr, String(drops), drops > 0 ? "sd-bad num" : "num");
    const loss = srv.loss || st.loss?.[name] || {};
    const lost = num(loss.datagrams) ?? 0;
    cell(tr, `${lost} datagrams, ${num(loss.gaps) ?? 0} gaps`, lost > 0 ? "sd-bad" : "");
    const cache = rc.cache || {};
    cell(tr, fmtBytes(num(cache.bytes)), "num");
    const oldest = num(cache.oldest_ns);
    cell(tr, oldest ? fmtSpan((now - oldest) / 1e9) : "\u2014", "num");
  }
  if (!names.length) {
    $("relay").textContent = st.relay ? "no channels" : "no relay statistics yet (is the relay running?)";
    return;
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
  const used = num(cache.bytes);
  const budget = num(cache.budget_bytes);
  row("used", fmtBytes(used));
  row("budget", fmtBytes(budget));
  if (used != null && budget) row("share of budget", `${((100 * used) / budget).toFixed(1)} %`);
  if (cache.oldest_ns) row("oldest record", new Date(cache.oldest_ns / 1e6).toLocaleString());
  row("holds now", fmtSpan(num(cache.held_s)));
  row("written at", cache.rate_bytes_s != null ? `${fmtBytes(cache.rate_bytes_s)}/s` : "\u2014");
  row("reaches back when full, at this rate", fmtSpan(num(cache.reach_s)));
  const srv = st.server || {};
  if (srv.memory_bytes) row("server window memory", `${fmtBytes(srv.memory_used_bytes)} of ${fmtBytes(srv.memory_bytes)}`);
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
