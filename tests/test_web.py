"""The web UI in a real browser (Debian's Chromium, Playwright) against a real relay, live
server and demo source on loopback: pages, live values, charts, a dashboard with every
element, keep + export to HDF5, recovery after a server restart, screenshots."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from playwright.sync_api import sync_playwright

from web_helpers import SCREENSHOTS, Console, Stack, launch, wait_live, wait_until

RPM = 'sd-value[signal="engine.rpm"]'
PAGES = ["/", "/status", "/channels", "/d/engine", "/d/power", "/d/every"]

EVERY_ELEMENT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>every element</title>
<link rel="icon" href="data:,">
<script type="module" src="/web/js/elements.js"></script></head>
<body>
<sd-value id="v" signal="engine.rpm" digits="1" units></sd-value>
<sd-value id="v2" signal="power.voltage" units="volt"></sd-value>
<sd-state id="s" signal="engine.state" colors="RUN:green"></sd-state>
<sd-spark id="k" signal="power.current" window="10s"></sd-spark>
<sd-chart id="c1" signals="engine.rpm engine.torque" window="10s"></sd-chart>
<sd-chart id="c2" signals="power.*" window="5s" ymin="-400" ymax="400" title="power"></sd-chart>
<sd-status id="st"></sd-status>
<sd-status id="stc" channels="engine" compact></sd-status>
</body></html>
"""


@pytest.fixture(scope="module")
def stack():
    tmp = Path(tempfile.mkdtemp(prefix="sd-web-", dir="/tmp"))
    s = Stack(tmp, tmp)
    (s.dashboards / "every.html").write_text(EVERY_ELEMENT)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    pg = context.new_page()
    yield pg
    context.close()


def js(page, expr):
    return page.evaluate(expr)


@pytest.mark.parametrize("path", PAGES)
def test_page_loads_without_console_errors(stack, page, path):
    console = Console(page)
    response = page.goto(stack.url + path)
    assert response.status == 200
    wait_live(page)
    time.sleep(2.5)  # frames, status messages, a REST poll
    assert console.errors == [], stack.logs()
    assert js(page, "window.speeddata.state") == "open"


def test_overview_lists_every_channel_and_charts_a_signal(stack, page):
    console = Console(page)
    page.goto(stack.url + "/")
    wait_live(page)
    page.wait_for_selector("section.sd-channel[data-channel=power]")
    names = js(page, "[...document.querySelectorAll('section.sd-channel')]"
                     ".map(s => s.dataset.channel)")
    assert names == ["engine", "power", "status"]
    rows = js(page, "[...document.querySelectorAll('tr[data-signal]')].map(r => r.dataset.signal)")
    assert {"engine.rpm", "engine.state", "power.voltage", "status.host.cpu_temp"} <= set(rows)
    # values arrive, rates are shown
    page.wait_for_function(
        "() => !Number.isNaN(document.querySelector("
        "'tr[data-signal=\"engine.rpm\"] sd-value').value)")
    page.wait_for_function(
        "() => document.querySelector('.sd-rate').textContent.includes('records/s')")
    # a string signal shows its text
    page.wait_for_function(
        "() => /[a-z]/.test(document.querySelector("
        "'tr[data-signal=\"status.message\"] sd-value .sd-num').textContent)", timeout=15000)
    # click a signal: a chart of it; tick two: one chart of both
    page.click("tr[data-signal='engine.rpm'] .sd-signal-link")
    page.check("tr[data-signal='power.voltage'] .sd-pick")
    page.check("tr[data-signal='power.current'] .sd-pick")
    page.click("#chart-selected")
    page.wait_for_function("() => document.querySelectorAll('#charts sd-chart').length === 2")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#charts sd-chart')]"
        ".every(c => c._store && c._store.version > 0)")
    charts = js(page, "[...document.querySelectorAll('#charts sd-chart')]"
                      ".map(c => c.resolvedSignals)")
    assert charts == [["power.voltage", "power.current"], ["engine.rpm"]]
    # save as a dashboard: the server stores it in its dashboards folder (POST
    # /api/dashboards) and the page links to it
    page.fill("#dash-name", "mine")
    page.click("#save")
    page.wait_for_selector("#save-msg a[href='/d/mine']")
    html = (stack.dashboards / "mine.html").read_text()
    assert '<sd-chart signals="power.voltage power.current"' in html
    assert '/web/js/elements.js' in html
    # a name taken already: the server refuses to overwrite it, the page downloads instead
    with page.expect_download() as dl:
        page.click("#save")
    assert Path(dl.value.path()).read_text() == html
    assert "exists already" in page.inner_text("#save-msg")
    # the refused POST is the one console error Chromium logs here ("... status of 409")
    assert all("409" in e for e in console.errors), console.errors
    console.errors.clear()
    # the saved file works as a dashboard
    page.goto(stack.url + "/d/mine")
    wait_live(page)
    page.wait_for_function(
        "() => [...document.querySelectorAll('sd-chart')].length === 2 && "
        "[...document.querySelectorAll('sd-chart')].every(c => c._store && c._store.version > 0)")
    assert console.errors == []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)


def _chart_state(page, sel):
    return js(page, f"""(() => {{
        const c = document.querySelector({sel!r});
        const st = c._store;
        let n = 0;
        for (const y of st.y) for (const v of y) if (!Number.isNaN(v)) n++;
        return {{version: st.version, points: n, xmax: c._u.scales.x.max,
                 signals: c.resolvedSignals}};
    }})()""")


def test_values_and_charts_move(stack, page):
    page.goto(stack.url + "/d/engine")
    wait_live(page)
    sel = "sd-chart[signals='engine.rpm engine.torque']"
    page.wait_for_function(f"() => document.querySelector(\"{sel}\")._store?.version > 2")
    v1 = js(page, "document.querySelector('sd-value[signal=\"engine.rpm\"]').value")
    text1 = page.inner_text("sd-value[signal='engine.rpm'] .sd-num")
    a = _chart_state(page, sel)
    time.sleep(1.5)
    v2 = js(page, "document.querySelector('sd-value[signal=\"engine.rpm\"]').value")
    b = _chart_state(page, sel)
    assert v1 != v2 and not np.isnan(v2)
    assert 1000 <= v2 <= 4000  # the demo's rpm: 2500 +- 1500
    assert text1 != "\u2014"
    assert b["version"] > a["version"] and b["xmax"] > a["xmax"] + 1.0
    assert b["points"] > 100 and b["signals"] == ["engine.rpm", "engine.torque"]
    # the state shows one of the enum's symbols, not stale
    state = page.get_attribute("sd-state[signal='engine.state']", "state")
    assert state in ("IDLE", "RUN", "FAULT")
    assert page.get_attribute("sd-value[signal='engine.rpm']", "stale") is None


def test_dashboard_with_every_element(stack, page):
    console = Console(page)
    page.goto(stack.url + "/d/every")
    wait_live(page)
    page.wait_for_function("""() => {
        const q = (s) => document.querySelector(s);
        return !Number.isNaN(q('#v').value) && !Number.isNaN(q('#v2').value) && q('#s').symbol
            && q('#c1')._store?.version > 0 && q('#c2')._store?.version > 0
            && q('#st').querySelector('tr[data-channel=power]');
    }""", timeout=20000)
    assert page.inner_text("#v .sd-units") == "1/min"
    assert page.inner_text("#v2 .sd-units") == "volt"
    assert js(page, "document.querySelector('#c2').resolvedSignals") == [
        "power.voltage", "power.current", "power.noise"]
    # fixed range honoured, autoscale elsewhere
    assert js(page, "document.querySelector('#c2')._u.scales.y0.min") == -400
    page.wait_for_function("() => document.querySelector('#c1')._u.scales.y0.min > 500")
    lo, hi = js(page, "[document.querySelector('#c1')._u.scales.y0.min, "
                      "document.querySelector('#c1')._u.scales.y0.max]")
    assert 500 < lo < hi < 4500
    # the sparkline drew something
    painted = js(page, """(() => { const c = document.querySelector('#k canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })()""")
    assert painted > 20
    # the relay's counters reach the table (its stats message, once a second)
    page.wait_for_function(
        "() => document.querySelector('#st tr[data-channel=power]').cells[6].textContent === '0'",
        timeout=15000)
    page.wait_for_function("() => document.querySelector('#stc').hasAttribute('ok')")
    assert "healthy" in page.inner_text("#stc")
    assert console.errors == []


def test_screenshots(stack, page):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(stack.url + "/")
    wait_live(page)
    page.click("tr[data-signal='engine.rpm'] .sd-signal-link")
    page.wait_for_function("() => document.querySelector('#charts sd-chart')?._store?.version > 5")
    time.sleep(1)
    for name, path in (("overview", "/"), ("dashboard", "/d/engine"), ("status", "/status")):
        if path != "/":
            page.goto(stack.url + path)
            wait_live(page)
            time.sleep(3)
        out = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(out), full_page=True)
        assert out.stat().st_size > 10_000


def test_keep_and_export_hdf5_from_the_chart(stack, page, tmp_path):
    # the cache must hold the range: wait until the stack has run for a while
    wait_until(lambda: time.monotonic() - stack.started > 16, timeout=30)
    page.goto(stack.url + "/d/engine")
    wait_live(page)
    sel = "sd-chart[signals='engine.rpm engine.torque']"
    page.wait_for_function(f"() => document.querySelector(\"{sel}\")._store?.version > 2")
    # drag across the plot, from 60 % to 85 % of its width (the last 30 s)
    box = page.locator(f"{sel} .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.60, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.72, y, steps=5)
    page.mouse.move(box["x"] + box["width"] * 0.85, y, steps=5)
    page.mouse.up()
    page.wait_for_selector(f"{sel} .sd-select")
    assert js(page, f"document.querySelector(\"{sel}\").paused") is True
    page.fill(f"{sel} .sd-tag-name", "web-test-keep")
    page.fill(f"{sel} .sd-tag-note", "from the browser test")
    page.click(f"{sel} .sd-keep")
    page.wait_for_function(
        f"() => /kept as|\\\\S/.test(document.querySelector(\"{sel} .sd-msg\").textContent) && "
        f"!document.querySelector(\"{sel} .sd-msg\").textContent.startsWith('keeping')")
    msg = page.inner_text(f"{sel} .sd-msg")
    assert msg == "kept as web-test-keep", msg + stack.logs()
    tag = js(page, "fetch('/api/tags/web-test-keep').then(r => r.json())")
    assert tag["note"] == "from the browser test" and tag["channels"] == ["engine"]
    with page.expect_download(timeout=60000) as dl:
        page.click(f"{sel} .sd-export-h5")
    path = tmp_path / "kept.h5"
    dl.value.save_as(path)
    with h5py.File(path, "r") as f:
        t = f["engine/time"][()]
        rpm = f["engine/rpm"][()]
    assert len(t) == len(rpm) > 100
    t = t.astype(np.int64)
    assert tag["start_ns"] <= t.min() and t.max() < tag["end_ns"]
    span = tag["end_ns"] - tag["start_ns"]
    assert t.max() - t.min() > 0.8 * span  # the demo sends every 10 ms: the range is full
    assert abs(span / 1e9 - 7.5) < 0.3  # the drag: 25 % of the 30 s window
    assert np.all((rpm >= 999) & (rpm <= 4001))
    # CSV of the same range: rows of the visible signals
    with page.expect_download(timeout=60000) as dl2:
        page.click(f"{sel} .sd-export-csv")
    csv = Path(dl2.value.path()).read_text().splitlines()
    assert csv[0].split(",")[:2] == ["channel", "time_ns"] and "rpm" in csv[0]
    assert len(csv) > 100
    # back to live
    page.click(f"{sel} .sd-pause")
    assert js(page, f"document.querySelector(\"{sel}\").paused") is False


def test_scroll_back_and_zoom(stack, page):
    page.goto(stack.url + "/d/engine")
    wait_live(page)
    sel = "sd-chart[signals='engine.rpm engine.torque']"
    page.wait_for_function(f"() => document.querySelector(\"{sel}\")._store?.version > 2")
    page.click(f"{sel} .sd-pause")
    t0, t1 = js(page, f"document.querySelector(\"{sel}\").view")
    page.click(f"{sel} .sd-back")
    page.click(f"{sel} .sd-zoomin")
    page.wait_for_function(f"() => document.querySelector(\"{sel}\")._rangeReq !== null "
                           f"&& document.querySelector(\"{sel}\")._store.version > 0")
    a0, a1 = js(page, f"document.querySelector(\"{sel}\").view")
    assert a1 < t1 and (a1 - a0) < (t1 - t0)
    # the range subscription delivered columns inside the asked range
    ext = js(page, f"document.querySelector(\"{sel}\")._store.extent()")
    assert ext[0] <= a0 + 1 and ext[1] >= a1 - 1


def test_page_recovers_after_server_restart(stack, page):
    page.goto(stack.url + "/d/engine")
    wait_live(page)
    page.wait_for_function(f"() => !Number.isNaN(document.querySelector({RPM!r}).value)")
    js(page, "window.__before = document.querySelector('sd-chart')._store")
    stack.stop_server()
    page.wait_for_function("() => window.speeddata.state === 'reconnecting'")
    badge = page.inner_text(".sd-connection")
    assert "reconnect" in badge
    page.wait_for_function(f"() => document.querySelector({RPM!r}).hasAttribute('stale')")
    stack.start_server()
    page.wait_for_function("() => window.speeddata.state === 'open'", timeout=30000)
    # resubscribed: values and chart columns flow again
    probe = f"""(() => {{ const c = document.querySelector("sd-chart"); const RPM = {RPM!r};
        return {{renewed: c._store !== window.__before, version: c._store?.version,
                stale: document.querySelector(RPM).hasAttribute('stale'),
                state: window.speeddata.state}}; }})()"""
    try:
        wait_until(lambda: (lambda p: p["renewed"] and p["version"] > 3 and not p["stale"])(
            js(page, probe)), timeout=30)
    except AssertionError:
        raise AssertionError(f"{js(page, probe)}\n{stack.logs()}") from None
    assert page.inner_text(".sd-connection") == "live"


VIBRATION = (Path(__file__).resolve().parents[1] / "src/speeddata/schemas/fixed.avsc").read_text()


def test_channels_page_registers_and_removes(stack, page):
    from conftest import free_udp_port

    console = Console(page)
    page.goto(stack.url + "/channels")
    wait_live(page)
    page.wait_for_selector("#list tr[data-channel=engine]")
    port = free_udp_port()
    page.fill("#name", "vib")
    page.fill("#port", str(port))
    # not JSON: said inline before any request
    page.fill("#schema", "{not json")
    page.click("#add button[type=submit]")
    msg = "document.querySelector('#add-msg')"
    page.wait_for_function(f"() => {msg}.textContent.includes('not JSON')")
    # JSON but no Avro record: the server's reason, inline
    page.fill("#schema", '{"type": "record", "name": "vib", "fields": [{"name": "x"}]}')
    page.click("#add button[type=submit]")
    page.wait_for_function("() => document.querySelector('#add-msg').className === 'sd-error' && "
                           "document.querySelector('#add-msg').textContent.length > 10")
    assert "schema" in page.inner_text("#add-msg")
    # a good schema: registered, and the channel appears (the server's next hello)
    page.fill("#schema", VIBRATION)
    page.click("#add button[type=submit]")
    page.wait_for_function(f"() => {msg}.textContent.startsWith('registered')", timeout=20000)
    page.wait_for_selector("#list tr[data-channel=vib]", timeout=20000)
    # remove: asks once, then removes; the row goes away
    page.click("#list tr[data-channel=vib] .sd-remove")
    assert "really" in page.inner_text("#list tr[data-channel=vib] .sd-remove")
    page.click("#list tr[data-channel=vib] .sd-remove")
    page.wait_for_function(
        "() => document.querySelector('#list-msg').textContent === 'removed vib'")
    page.wait_for_selector("#list tr[data-channel=vib]", state="detached", timeout=20000)
    assert [e for e in console.errors if "status of 4" not in e] == []


def test_status_page_shows_relay_and_cache(stack, page):
    import socket

    # two datagrams the relay rejects, for the "rejected by reason" column
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        for bad in (b"\x02", b""):  # a varint that promises more bytes; an empty datagram
            s.sendto(bad, ("127.0.0.1", stack.info["ports"]["status"]))
    page.goto(stack.url + "/status")
    wait_live(page)
    page.wait_for_selector("#relay tr[data-channel=power]", timeout=15000)
    page.wait_for_function(
        "() => /truncated: 1/.test(document.querySelector('#relay tr[data-channel=status]')"
        "?.textContent) && /empty: 1/.test(document.querySelector("
        "'#relay tr[data-channel=status]').textContent)", timeout=20000)
    row = page.inner_text("#relay tr[data-channel=power]")
    assert "0 datagrams, 0 gaps" in row  # no multicast loss on loopback
    cells = js(page, "[...document.querySelector('#relay tr[data-channel=power]').cells]"
                     ".map(c => c.textContent)")
    assert int(cells[4].replace(",", "")) > 100  # records counted by the relay
    assert cells[6] == "0"  # kernel drops
    # the relay's stats come once a second and a young cache has no oldest record yet
    page.wait_for_function(
        "() => document.querySelector('#cache').textContent.includes('oldest record')",
        timeout=20000)
    cache = page.inner_text("#cache")
    assert "used" in cache and "reaches back" in cache and "oldest record" in cache


def test_chart_draws_gaps_as_gaps(stack, page):
    """A loss interval from the server cuts the line: uPlot gets it as a clip range."""
    page.goto(stack.url + "/d/engine")
    wait_live(page)
    sel = "sd-chart[signals='engine.rpm engine.torque']"
    page.wait_for_function(f"() => document.querySelector(\"{sel}\")._store?.version > 5")
    page.click(f"{sel} .sd-pause")
    gaps = js(page, f"""(() => {{
        const c = document.querySelector("{sel}");
        const [t0, t1] = c.view;
        const a = t0 + (t1 - t0) * 0.4, b = t0 + (t1 - t0) * 0.5;
        c.onGaps(0, new Float64Array([a]), new Float64Array([b]));
        c.draw();
        return [c._u.series[1]._paths.gaps, c._u.series[2]._paths.gaps,
                c._u.valToPos(a, "x", true), c._u.valToPos(b, "x", true)];
    }})()""")
    rpm_gaps, torque_gaps, pa, pb = gaps
    assert len(rpm_gaps) == 1 and torque_gaps == []
    assert abs(rpm_gaps[0][0] - pa) <= 1 and abs(rpm_gaps[0][1] - pb) <= 1


def test_dark_theme_follows_the_system(browser, stack):
    context = browser.new_context(color_scheme="dark", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(stack.url + "/d/engine")
        wait_live(page)
        bg = js(page, "getComputedStyle(document.body).backgroundColor")
        assert bg == "rgb(13, 17, 23)"
        page.wait_for_function(
            f"() => document.querySelector('sd-chart')._store?.version > 5 && "
            f"!Number.isNaN(document.querySelector({RPM!r}).value) && window.speeddata.status")
        time.sleep(2)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "dashboard-dark.png"))
    finally:
        context.close()


def test_chart_hover_readout_and_resize(stack, page):
    page.goto(stack.url + "/d/engine")
    wait_live(page)
    sel = "sd-chart[signals='engine.rpm engine.torque']"
    page.wait_for_function(f"() => document.querySelector(\"{sel}\")._store?.version > 5")
    page.click(f"{sel} .sd-pause")  # a still picture under the pointer
    box = page.locator(f"{sel} .u-over").bounding_box()
    # half a second before the newest data (the stack may be only seconds old)
    x = js(page, f"(() => {{ const c = document.querySelector(\"{sel}\"); "
                 "return c._u.valToPos(c._store.newestEnd() - 0.5, 'x'); })()")
    page.mouse.move(box["x"] + x - 20, box["y"] + box["height"] / 2)
    page.mouse.move(box["x"] + x, box["y"] + box["height"] / 2, steps=4)
    values = page.locator(f"{sel} .u-legend .u-value").all_inner_texts()
    assert len(values) == 3  # time, rpm, torque
    assert ":" in values[0]  # a time of day
    assert 900 <= float(values[1]) <= 4100
    # the chart follows its box
    width = js(page, f"document.querySelector(\"{sel}\")._u.width")
    js(page, f"document.querySelector(\"{sel}\").style.width = '400px'")
    page.wait_for_function(f"() => document.querySelector(\"{sel}\")._u.width < {width} - 100")
    assert js(page, f"document.querySelector(\"{sel}\")._u.width") <= 400


def test_scroll_back_into_the_cache(browser):
    """A server whose live window is 4 s: a paused chart shown 10 s back reads the cache."""
    tmp = Path(tempfile.mkdtemp(prefix="sd-web-cache-", dir="/tmp"))
    s = Stack(tmp, tmp, extra='window = "4s"\n')
    (s.dashboards / "short.html").write_text(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>short</title>'
        '<link rel="icon" href="data:,"><script type="module" src="/web/js/elements.js">'
        '</script></head><body><sd-chart signals="engine.rpm" window="3s"></sd-chart>'
        "</body></html>")
    context = browser.new_context(viewport={"width": 1000, "height": 600})
    page = context.new_page()
    try:
        s.start()
        console = Console(page)
        page.goto(s.url + "/d/short")
        wait_live(page)
        page.wait_for_function("() => document.querySelector('sd-chart')._store?.version > 2")
        wait_until(lambda: time.monotonic() - s.started > 13, timeout=30)
        t = js(page, """(() => { const c = document.querySelector('sd-chart');
            const end = c._store.newestEnd(); c.showRange(end - 11, end - 8);
            return [end - 11, end - 8]; })()""")
        page.wait_for_function("""() => { const c = document.querySelector('sd-chart');
            return c._rangeReq && c._store && !c._store.live &&
                   c._store.count[0].some(v => v > 0); }""", timeout=20000)
        got = js(page, """(() => { const st = document.querySelector('sd-chart')._store;
            const xs = [], ys = [];
            for (let j = 0; j < st.n; j++) if (st.count[0][j] > 0) {
                xs.push(st.x[4 * j]); ys.push(st.y[0][4 * j]); }
            return [xs, ys, st.count[0].reduce((a, b) => a + b, 0)]; })()""")
        xs, ys, records = got
        assert t[0] - 0.5 <= min(xs) and max(xs) <= t[1] + 0.5
        assert max(xs) - min(xs) > 2.0  # the 3 s range, from the cache
        assert 250 <= records <= 350  # 100 records/s over 3 s
        assert all(999 <= y <= 4001 for y in ys)
        assert console.errors == []
    finally:
        context.close()
        s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
