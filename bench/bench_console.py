"""The web console with 1,000 pumps, measured in the browser (headless Debian Chromium).

    .venv/bin/python -m bench.bench_console [--devices 1000] [--changes 40]

Two servers in the same run, each with a pump fleet online: ``base`` (1 pump, the baseline)
and ``fleet`` (``--devices`` pumps). For each:

* **load**: a signed-in user reloads the pumps screen; the time from navigation start until
  every tile is on screen and the page answers the next animation frame (it is usable);
* **frame to screen**: pumps are switched through the API; for each ``device.state`` frame, the
  time from the WebSocket frame's arrival in the page to its tile's ``data-state`` change in
  the DOM, and to the next painted frame after it.

Targets: load <= 1 s and frame to screen <= 100 ms with 1,000 pumps. Writes
bench/results_console.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from playwright.sync_api import sync_playwright

from .common import HERE, BenchServer, Context, PumpFleet, insert_devices, percentile

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
OUT = HERE / "results_console.json"

# Test instrumentation, injected before the console's own scripts: when each device.state frame
# arrived, and when the tile's data-state changed (and the frame after that was painted).
PROBE = """
window.__frames = new Map(); window.__shown = [];
const Native = window.WebSocket;
window.WebSocket = class extends Native {
  constructor(...args) {
    super(...args);
    this.addEventListener('message', (e) => {
      const t = performance.now();
      try { const b = JSON.parse(e.data); if (b.type === 'device.state') window.__frames.set(b.device_id + ':' + b.state, t); } catch {}
    });
  }
};
new MutationObserver((records) => {
  const t = performance.now();
  for (const r of records) {
    if (r.attributeName !== 'data-state') continue;
    const key = r.target.dataset.deviceId + ':' + r.target.dataset.state;
    const arrived = window.__frames.get(key);
    if (arrived === undefined) continue;
    window.__frames.delete(key);
    requestAnimationFrame(() => requestAnimationFrame(() => {}));
    requestAnimationFrame((painted) => window.__shown.push({ key, dom: t - arrived, paint: Math.max(t, painted) - arrived }));
  }
}).observe(document, { subtree: true, attributes: true, attributeFilter: ['data-state'] });
"""


def measure(ctx: Context, browser, name: str, devices: int, changes: int) -> dict:
    bs = BenchServer(ctx, name)
    bs.prepare()
    ids = insert_devices(bs.url, devices, max_run_minutes=60)
    fleet = None
    try:
        bs.start(timeout=180)
        fleet = PumpFleet(bs.env["PUMPLINK_MQTT_URL"], bs.prefix, ids).start()
        fleet.announce(ids)
        admin = bs.admin()
        total = len(admin.get("devices", timeout=60).json()["devices"])
        # bypass_csp: the probe's waits are evaluated strings, which the console's policy forbids.
        context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        context.add_init_script(PROBE)
        page = context.new_page()
        page.goto(bs.base + "/")
        page.get_by_label("Email").fill("admin@example.org")
        page.get_by_label("Password").fill("admin-password-1")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_function(f"document.querySelectorAll('.tiles > .tile').length === {total}", timeout=60_000)
        loads = []
        for _ in range(3):
            page.reload()
            # Usable: every pump is listed (a tile, or its placeholder below the fold), the first
            # screenful of tiles can be started, and the live feed is up.
            at = page.wait_for_function(
                f"() => document.querySelectorAll('.tiles > .tile').length === {total} "
                "&& document.querySelector('article.tile button[type=submit]:not([disabled])') "
                "&& document.querySelector('[data-live=\"true\"]') && performance.now()",
                polling="raf", timeout=60_000).json_value()
            usable = page.evaluate("() => new Promise((r) => requestAnimationFrame(() => r(performance.now())))")
            loads.append({"tiles_ms": round(at, 1), "usable_ms": round(usable, 1)})
        # Frames to screen: one pump at a time, on and then off (each run waits for the last to show).
        # Pumps whose tiles are on screen (the others show only their names until scrolled to).
        visible = page.evaluate("[...document.querySelectorAll('article.tile')].map((t) => Number(t.dataset.deviceId))")
        visible = [d for d in visible if d in set(ids)]
        for i in range(changes):
            device = visible[(i * 7) % len(visible)]
            before = page.evaluate("window.__shown.length")
            r = admin.post("activate", {"device_id": device, "duration_s": 1})
            if r.status_code != 202:
                raise RuntimeError(f"activate {device}: {r.status_code} {r.text}")
            page.wait_for_function(
                "([n, d]) => ['on', 'off'].every((s) => window.__shown.slice(n).some((x) => x.key === d + ':' + s))",
                arg=[before, device], timeout=15_000)
        shown = page.evaluate("window.__shown")
        context.close()
        dom = [s["dom"] for s in shown]
        paint = [s["paint"] for s in shown]
        usable = [x["usable_ms"] for x in loads]
        return {
            "devices": devices, "loads": loads, "load_usable_median_ms": statistics.median(usable),
            "state_changes_seen": len(shown),
            "frame_to_dom_ms": {"p50": round(percentile(dom, 50), 2), "p99": round(percentile(dom, 99), 2),
                                "max": round(max(dom), 2)} if dom else None,
            "frame_to_paint_ms": {"p50": round(percentile(paint, 50), 2), "p99": round(percentile(paint, 99), 2),
                                  "max": round(max(paint), 2)} if paint else None,
        }
    finally:
        if fleet is not None:
            fleet.close()
        bs.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=40)
    args = parser.parse_args(argv)
    ctx = Context.make()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            base = measure(ctx, browser, "console_base", 1, args.changes // 4)
            fleet = measure(ctx, browser, "console_fleet", args.devices, args.changes)
        finally:
            browser.close()
    result = {
        "base": base, "fleet": fleet,
        "load_ratio": round(fleet["load_usable_median_ms"] / base["load_usable_median_ms"], 2),
        "pass_load": fleet["load_usable_median_ms"] <= 1000,
        "pass_update": bool(fleet["frame_to_paint_ms"]) and fleet["frame_to_paint_ms"]["max"] <= 100,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
