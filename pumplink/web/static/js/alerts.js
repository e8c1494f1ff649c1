// Alerts as they happen, worked out from the live feed: a pump going offline, a run the pump did
// not confirm, a scheduled run that was missed or skipped, a pump switched too often (flapping).
import { useEffect, useState } from "../vendor/hooks.js";
import { html, when } from "./ui.js";

const name = (device, id) => (device ? device.name : `Pump ${id}`);

export function alertFrom(ev, device) {
  const at = ev.at || new Date().toISOString();
  if (ev.type === "device.state" && ev.available === false && device && device.available !== false) {
    return { at, kind: "offline", text: `${name(device, ev.device_id)} is offline.` };
  }
  if (ev.type === "activation" && ev.state === "failed") {
    const why = ev.activation && ev.activation.reason ? ` (${ev.activation.reason.replaceAll("_", " ")})` : "";
    return { at, kind: "failed", text: `${name(device, ev.device_id)} did not confirm a run${why}.` };
  }
  if (ev.type === "schedule" && ev.change === "missed") {
    return { at, kind: "missed", text: `A scheduled run of ${name(device, ev.device_id)} was missed.` };
  }
  if (ev.type === "schedule" && ev.change === "fired") {
    const run = ev.schedule && ev.schedule.run;
    if (run && run.outcome && !["started", "queued", "firing"].includes(run.outcome)) {
      return { at, kind: "skipped", text: `Schedule ${ev.schedule_id} on ${name(device, ev.device_id)}: ${run.outcome}${run.detail ? ` — ${run.detail}` : ""}.` };
    }
  }
  return null;
}

// A pump switched on at its controller more often than allowed in the last hour (seen on a re-read).
export function flapped(before, after) {
  if (!before || before.flapping || !after.flapping) return null;
  return { at: new Date().toISOString(), kind: "flapping", text: `${after.name} was switched on and off too often in the last hour.` };
}

export function Alerts({ alerts, bus }) {
  const [, setTick] = useState(0);
  useEffect(() => {
    const on = () => setTick((n) => n + 1);
    bus.addEventListener("alert", on);
    return () => bus.removeEventListener("alert", on);
  }, [bus]);
  return html`<section aria-labelledby="alerts-h">
    <h1 id="alerts-h" tabindex="-1">Alerts</h1>
    <p>Offline pumps, runs a pump did not confirm, pumps switched too often, and missed or skipped schedules appear here as they happen.</p>
    ${alerts.length === 0 ? html`<p>No alerts since this page was opened.</p>` : html`
      <ul class="alerts">${alerts.map((a, i) => html`<li key=${i} class=${`alert ${a.kind}`}>
        <time datetime=${a.at}>${when(a.at)}</time> ${a.text}</li>`)}</ul>`}
  </section>`;
}
