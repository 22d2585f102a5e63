// The overview page: every channel and signal from the server's `hello`, no HTML written
// by anyone. Live value and sparkline per signal, rate and loss per channel; click a
// signal to chart it, tick several for one chart, save the charts as a dashboard.
import { api, getClient } from "./client.js";
import "./elements.js";

const client = getClient();
const $ = (id) => document.getElementById(id);
let shownKey = "";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === true) e.setAttribute(k, "");
    else if (v !== false && v != null) e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

function render(hello) {
  // rebuild only when the channels or their signals changed
  const key = JSON.stringify(hello.channels.map((c) => [c.name, c.signals.map((s) => s.name)]));
  if (key === shownKey) return;
  shownKey = key;
  const root = $("channels");
  root.replaceChildren();
  if (!hello.channels.length) {
    root.append(el("p", {}, "No channels yet: start a source, or register one on ", el("a", { href: "/channels" }, "channels"), "."));
  }
  for (const ch of hello.channels) {
    const rate = el("span", { class: "sd-rate", "data-channel": ch.name }, "");
    const loss = el("span", { class: "sd-loss", "data-channel": ch.name }, "");
    const section = el("section", { class: "sd-channel", "data-channel": ch.name },
      el("h2", {}, ch.name, el("small", {}, rate), el("small", {}, loss),
        el("small", {}, `${ch.signals.length} signals \u00B7 key ${ch.key}`)));
    const table = el("table", { class: "sd-table" });
    const head = table.createTHead().insertRow();
    for (const h of ["", "signal", "value", "units", "last minute", "type"]) head.appendChild(el("th", {}, h));
    const body = table.createTBody();
    for (const s of ch.signals) {
      const tr = body.insertRow();
      tr.dataset.signal = s.name;
      const box = el("input", { type: "checkbox", class: "sd-pick", value: s.name, "aria-label": `select ${s.name}` });
      box.disabled = s.kind === "string";
      box.addEventListener("change", updatePicked);
      const link = el("button", { type: "button", class: "sd-signal-link", title: s.doc || "" }, s.name);
      link.addEventListener("click", () => addChart([s.name]));
      link.disabled = s.kind === "string";
      let value;
      if (s.kind === "enum") value = el("sd-state", { signal: s.name });
      else value = el("sd-value", { signal: s.name });
      const spark = s.kind === "number" || s.kind === "enum" ? el("sd-spark", { signal: s.name, window: "60s" }) : "";
      tr.append(
        el("td", {}, box), el("td", {}, link), el("td", { class: "num" }, value),
        el("td", {}, s.units || ""), el("td", {}, spark), el("td", {}, s.type || s.kind),
      );
    }
    section.append(table);
    root.append(section);
  }
  updatePicked();
}

function updateRates(status) {
  for (const span of document.querySelectorAll(".sd-rate")) {
    const s = status.channels?.[span.dataset.channel];
    span.textContent = s && s.rate_hz != null ? `${s.rate_hz.toFixed(s.rate_hz < 10 ? 1 : 0)} records/s` : "";
  }
  for (const span of document.querySelectorAll(".sd-loss")) {
    const s = status.channels?.[span.dataset.channel];
    const lost = s?.loss?.datagrams ?? 0;
    span.textContent = s ? `loss ${lost} datagrams, ${s.loss?.gaps ?? 0} gaps` : "";
    span.className = lost > 0 ? "sd-loss sd-error" : "sd-loss";
  }
}

function picked() {
  return [...document.querySelectorAll(".sd-pick:checked")].map((b) => b.value);
}

function updatePicked() {
  const n = picked().length;
  $("chart-selected").disabled = n === 0;
  $("chart-selected").textContent = n > 1 ? `Chart ${n} selected` : "Chart selected";
}

function addChart(signals) {
  const chart = el("sd-chart", { signals: signals.join(" "), window: "30s" });
  const wrap = el("div", { class: "sd-adhoc-item" });
  const remove = el("button", { type: "button", class: "sd-remove" }, "remove chart");
  remove.addEventListener("click", () => {
    wrap.remove();
    $("adhoc").hidden = !$("charts").children.length;
  });
  wrap.append(chart, remove);
  $("charts").prepend(wrap);
  $("adhoc").hidden = false;
  return chart;
}

/** The ad-hoc charts as a dashboard page (HTML text). */
export function dashboardHtml(title) {
  const charts = [...document.querySelectorAll("#charts sd-chart")];
  const lines = charts.map((c) => `  <sd-chart signals="${c.getAttribute("signals")}" window="${c.getAttribute("window") || "30s"}"></sd-chart>`);
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${title}</title>
<link rel="icon" href="data:,">
<script type="module" src="/web/js/elements.js"></script>
<style>main { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 12px; padding: 12px; }</style>
</head>
<body>
<sd-status compact></sd-status>
<main>
${lines.join("\n")}
</main>
</body>
</html>
`;
}

async function save() {
  const name = $("dash-name").value.trim().replace(/[^A-Za-z0-9_-]+/g, "-") || "dashboard";
  const html = dashboardHtml(name);
  const msg = $("save-msg");
  // the server may offer to store it in its dashboards folder (its OpenAPI says so);
  // otherwise the page downloads the file
  let canPost = false;
  let note = "";
  try {
    const spec = await api("GET", "/api/openapi.json");
    canPost = !!spec?.paths?.["/api/dashboards"]?.post;
  } catch {
    canPost = false;
  }
  if (canPost) {
    try {
      await api("POST", "/api/dashboards", { name, html });
      msg.replaceChildren("saved: ", el("a", { href: `/d/${encodeURIComponent(name)}` }, `/d/${name}`));
      return;
    } catch (err) {
      note = `not saved on the server: ${err.message}; `;
    }
  }
  const a = el("a", { href: URL.createObjectURL(new Blob([html], { type: "text/html" })), download: `${name}.html` });
  document.body.append(a);
  a.click();
  a.remove();
  msg.textContent = `${note}downloaded ${name}.html: put it in the server's dashboards folder, then open /d/${name}`;
}

$("chart-selected").addEventListener("click", () => {
  const names = picked();
  if (!names.length) return;
  addChart(names);
  for (const b of document.querySelectorAll(".sd-pick:checked")) b.checked = false;
  updatePicked();
});
$("save").addEventListener("click", save);
$("clear").addEventListener("click", () => {
  $("charts").replaceChildren();
  $("adhoc").hidden = true;
});
client.addEventListener("hello", (e) => render(e.detail));
client.addEventListener("status", (e) => updateRates(e.detail));
if (client.hello) render(client.hello);
