// The channels page: the channels the server knows (from `hello`), register one at run
// time (POST /api/channels, the relay's errors shown inline) and remove one
// (DELETE /api/channels/{name}).
import { api, getClient } from "./client.js";
import "./elements.js";

const client = getClient();
const removed = new Set(); // removed here: the server may announce them a little longer
const $ = (id) => document.getElementById(id);

function renderList() {
  const body = $("list").tBodies[0];
  body.replaceChildren();
  const status = client.status?.channels || {};
  for (const ch of client.channels.values()) {
    if (removed.has(ch.name)) continue;
    const tr = body.insertRow();
    tr.dataset.channel = ch.name;
    for (const v of [ch.name, ch.key, status[ch.name]?.rate_hz?.toFixed(1) ?? "\u2014", ch.signals.length]) {
      tr.insertCell().textContent = String(v);
    }
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = "remove";
    b.className = "sd-remove";
    b.addEventListener("click", () => remove(ch.name, b));
    tr.insertCell().append(b);
  }
}

async function remove(name, button) {
  if (button.dataset.confirm !== "yes") {
    button.dataset.confirm = "yes";
    button.textContent = `really remove ${name}?`;
    return;
  }
  try {
    await api("DELETE", `/api/channels/${encodeURIComponent(name)}`);
    removed.add(name);
    button.closest("tr")?.remove();
    $("list-msg").className = "sd-ok-text";
    $("list-msg").textContent = `removed ${name}`;
  } catch (err) {
    $("list-msg").className = "sd-error";
    $("list-msg").textContent = `cannot remove ${name}: ${err.message}`;
  }
}

$("schema-file").addEventListener("change", async (e) => {
  const f = e.target.files[0];
  if (f) $("schema").value = await f.text();
});

$("add").addEventListener("submit", async (e) => {
  e.preventDefault();
  const msg = $("add-msg");
  msg.className = "";
  let schema;
  try {
    schema = JSON.parse($("schema").value);
  } catch (err) {
    msg.className = "sd-error";
    msg.textContent = `the schema is not JSON: ${err.message}`;
    return;
  }
  const body = {
    name: $("name").value.trim(),
    port: Number($("port").value),
    decimation: Number($("decimation").value) || 1,
    schema,
  };
  msg.textContent = "registering\u2026";
  try {
    await api("POST", "/api/channels", body);
    removed.delete(body.name);
    msg.className = "sd-ok-text";
    msg.textContent = `registered ${body.name} on UDP port ${body.port}`;
  } catch (err) {
    msg.className = "sd-error";
    msg.textContent = err.message;
  }
});

client.addEventListener("hello", renderList);
client.addEventListener("status", () => {
  for (const tr of $("list").tBodies[0].rows) {
    const r = client.status.channels?.[tr.dataset.channel]?.rate_hz;
    tr.cells[2].textContent = r != null ? r.toFixed(1) : "\u2014";
  }
});
if (client.hello) renderList();
