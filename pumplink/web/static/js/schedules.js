// Schedules: one-off or recurring runs (a rule builder that writes RRULE), next runs in the
// user's zone, enable/disable/delete, and past runs with their outcomes.
import { useEffect, useState } from "../vendor/hooks.js";
import { html, when, seconds, Message, isoToLocalInput, localToIso, zone } from "./ui.js";
import * as api from "./api.js";

const DAYS = [["MO", "Mon"], ["TU", "Tue"], ["WE", "Wed"], ["TH", "Thu"], ["FR", "Fri"], ["SA", "Sat"], ["SU", "Sun"]];

// The rule the builder's choices describe (null: a one-off run). Times of day come from the start
// time plus any extra hours; the server expands the rule in the device's zone.
export function buildRule({ repeat, every, days, hours }) {
  const n = Math.max(1, Math.floor(Number(every) || 1));
  const extra = (hours || "").split(/[ ,]+/).filter(Boolean).map(Number).filter((x) => x >= 0 && x < 24);
  const byhour = extra.length ? `;BYHOUR=${[...new Set(extra)].sort((a, b) => a - b).join(",")}` : "";
  switch (repeat) {
    case "daily": return `FREQ=DAILY${n > 1 ? `;INTERVAL=${n}` : ""}${byhour}`;
    case "weekly": return `FREQ=WEEKLY${days.length ? `;BYDAY=${days.join(",")}` : ""}${byhour}`;
    case "hourly": return `FREQ=HOURLY${n > 1 ? `;INTERVAL=${n}` : ""}`;
    case "minutely": return `FREQ=MINUTELY${n > 1 ? `;INTERVAL=${n}` : ""}`;
    default: return null;
  }
}

export function ruleInWords(rule) {
  if (!rule) return "Once";
  const parts = Object.fromEntries(rule.split(";").map((p) => p.split("=")));
  const n = Number(parts.INTERVAL || 1);
  const unit = { DAILY: "day", WEEKLY: "week", HOURLY: "hour", MINUTELY: "minute" }[parts.FREQ] || parts.FREQ;
  let text = n > 1 ? `Every ${n} ${unit}s` : `Every ${unit}`;
  if (parts.BYDAY) text += ` on ${parts.BYDAY.split(",").map((d) => (DAYS.find(([k]) => k === d) || [d, d])[1]).join(", ")}`;
  if (parts.BYHOUR) text += ` at ${parts.BYHOUR.split(",").map((x) => `${x}:00`).join(", ")} (hour)`;
  return text;
}

function NewSchedule({ store, onCreated }) {
  const ids = store.ids;
  const soon = new Date(Date.now() + 60 * 60 * 1000);
  soon.setMinutes(0, 0, 0);
  const [device, setDevice] = useState(ids[0] ? String(ids[0]) : "");
  const [start, setStart] = useState(isoToLocalInput(soon));
  const [amount, setAmount] = useState("10");
  const [unit, setUnit] = useState("min");
  const [repeat, setRepeat] = useState("none");
  const [every, setEvery] = useState("1");
  const [days, setDays] = useState([]);
  const [hours, setHours] = useState("");
  const [msg, setMsg] = useState({});
  const [busy, setBusy] = useState(false);
  const rule = buildRule({ repeat, every, days, hours });
  const submit = async (ev) => {
    ev.preventDefault();
    setBusy(true);
    setMsg({});
    try {
      const body = { device_id: Number(device), start_time: localToIso(start), rrule: rule || undefined,
                     [unit === "s" ? "duration_s" : "duration"]: Number(amount) };
      const answer = await api.post("/schedules", body);
      const first = answer.schedule && answer.schedule.next_run_at;
      setMsg({ ok: `Schedule ${answer.schedule.id} created${first ? `; its first run is ${when(first)}` : ""}.` });
      onCreated();
    } catch (err) {
      setMsg({ error: err.message });
    } finally {
      setBusy(false);
    }
  };
  const toggleDay = (d) => setDays(days.includes(d) ? days.filter((x) => x !== d) : [...days, d]);
  return html`<form class="card stack" onSubmit=${submit} aria-labelledby="new-schedule-h">
    <h2 id="new-schedule-h">New schedule</h2>
    <label for="s-device">Pump</label>
    <select id="s-device" value=${device} onChange=${(e) => setDevice(e.currentTarget.value)} required>
      ${ids.map((id) => html`<option key=${id} value=${id}>${store.get(id) ? store.get(id).name : id}</option>`)}
    </select>
    <label for="s-start">First run (${zone})</label>
    <input id="s-start" type="datetime-local" step="1" required value=${start} onInput=${(e) => setStart(e.currentTarget.value)} />
    <fieldset class="inline">
      <legend>Run length</legend>
      <label for="s-amount" class="sr">Length</label>
      <input id="s-amount" type="number" min="0" step="any" required value=${amount} onInput=${(e) => setAmount(e.currentTarget.value)} />
      <label for="s-unit" class="sr">Unit</label>
      <select id="s-unit" value=${unit} onChange=${(e) => setUnit(e.currentTarget.value)}>
        <option value="min">minutes</option><option value="s">seconds</option>
      </select>
    </fieldset>
    <label for="s-repeat">Repeat</label>
    <select id="s-repeat" value=${repeat} onChange=${(e) => setRepeat(e.currentTarget.value)}>
      <option value="none">Once</option>
      <option value="daily">Every N days</option>
      <option value="weekly">On days of the week</option>
      <option value="hourly">Every N hours</option>
      <option value="minutely">Every N minutes</option>
    </select>
    ${["daily", "hourly", "minutely"].includes(repeat) ? html`
      <label for="s-every">Every how many ${{ daily: "days", hourly: "hours", minutely: "minutes" }[repeat]}</label>
      <input id="s-every" type="number" min="1" step="1" value=${every} onInput=${(e) => setEvery(e.currentTarget.value)} />` : null}
    ${repeat === "weekly" ? html`<fieldset class="inline"><legend>Days</legend>
      ${DAYS.map(([k, label]) => html`<label key=${k} class="check"><input type="checkbox" checked=${days.includes(k)}
        onChange=${() => toggleDay(k)} /> ${label}</label>`)}</fieldset>` : null}
    ${repeat === "daily" || repeat === "weekly" ? html`
      <label for="s-hours">Also at these hours (0–23, commas; the start time's minute)</label>
      <input id="s-hours" type="text" inputmode="numeric" value=${hours} onInput=${(e) => setHours(e.currentTarget.value)} />` : null}
    <p class="rule">Rule: <code>${rule || "none (one run)"}</code></p>
    <button type="submit" disabled=${busy || !device}>Create schedule</button>
    <${Message} ...${msg} />
  </form>`;
}

function ScheduleRow({ s, store, onChange }) {
  const [msg, setMsg] = useState({});
  const device = store.get(s.device_id);
  const act = async (fn) => {
    setMsg({});
    try { await fn(); onChange(); } catch (err) { setMsg({ error: err.message }); }
  };
  const label = `Schedule ${s.id}`;
  return html`<li class="card schedule" data-schedule-id=${s.id} aria-label=${label}>
    <h3>${device ? device.name : `Pump ${s.device_id}`}: ${seconds(s.duration_s)}, ${ruleInWords(s.rrule)}</h3>
    <p>Status: <strong>${s.status}</strong>. ${s.rrule ? html`Rule <code>${s.rrule}</code>.` : null} Starts ${when(s.start_time)}.</p>
    ${s.next_runs && s.next_runs.length ? html`<p>Next runs: ${s.next_runs.map((t, i) => html`<span key=${i}>${i ? ", " : ""}<time datetime=${t}>${when(t)}</time></span>`)}</p>` : html`<p>No runs ahead.</p>`}
    <p class="actions">
      <button type="button" onClick=${() => act(() => api.patch(`/schedules/${s.id}`, { enabled: !s.enabled }))}>
        ${s.enabled ? "Disable" : "Enable"}<span class="sr"> ${label}</span></button>
      <button type="button" class="danger" onClick=${() => confirm(`Delete schedule ${s.id}?`) && act(() => api.del(`/schedules/${s.id}`))}>
        Delete<span class="sr"> ${label}</span></button>
    </p>
    <details>
      <summary>Past runs (${s.run_count})</summary>
      ${s.runs.length ? html`<table><caption class="sr">Past runs of ${label}</caption>
        <thead><tr><th scope="col">Due</th><th scope="col">Outcome</th><th scope="col">Detail</th></tr></thead>
        <tbody>${s.runs.map((r) => html`<tr key=${r.id}><td>${when(r.due_at)}</td><td class="outcome">${r.outcome}</td><td>${r.detail || ""}</td></tr>`)}</tbody>
      </table>` : html`<p>None yet.</p>`}
    </details>
    <${Message} ...${msg} />
  </li>`;
}

export function Schedules({ store, bus }) {
  const [items, setItems] = useState(null);
  const [error, setError] = useState("");
  const load = () => api.all("/schedules?limit=200", "items", 1000).then((list) => { setItems(list); setError(""); },
    (err) => setError(err.message));
  useEffect(() => {
    load();
    let t = null;
    const on = () => { clearTimeout(t); t = setTimeout(load, 200); };
    bus.addEventListener("schedule", on);
    return () => { clearTimeout(t); bus.removeEventListener("schedule", on); };
  }, []);
  return html`<section aria-labelledby="schedules-h">
    <h1 id="schedules-h" tabindex="-1">Schedules</h1>
    <${NewSchedule} store=${store} onCreated=${load} />
    <${Message} error=${error} />
    <h2>Your schedules</h2>
    ${items === null ? html`<p>Loading…</p>` : items.length === 0 ? html`<p>No schedules yet.</p>` : html`
      <ul class="schedules">${items.map((s) => html`<${ScheduleRow} key=${s.id} s=${s} store=${store} onChange=${load} />`)}</ul>`}
  </section>`;
}
