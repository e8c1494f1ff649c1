// History: a pump's sessions (intended vs actual, cause), a day timeline of planned and actual
// runs, and minutes run per day per pump over 30 days.
import { useEffect, useRef, useState } from "../vendor/hooks.js";
import uPlot from "../vendor/uplot.js";
import { html, when, clock, seconds, day, startOfDay, Message } from "./ui.js";
import * as api from "./api.js";

const COLORS = ["#1f5f99", "#b3541e", "#2e7d32", "#7b3fa0", "#8a6d00", "#00796b"];
const DAY_MS = 86400000;

function Timeline({ sessions, planned, date }) {
  const from = startOfDay(date).getTime();
  const pct = (t) => Math.max(0, Math.min(100, ((t - from) / DAY_MS) * 100));
  const runs = sessions.filter((s) => Date.parse(s.started_at) < from + DAY_MS && Date.parse(s.ended_at || Date.now()) >= from);
  return html`<figure class="timeline">
    <figcaption>The day ${day(date)}: actual runs (bars) and planned runs (marks)</figcaption>
    <div class="track" role="img" aria-label=${`${runs.length} actual runs and ${planned.length} planned runs on ${day(date)}`}>
      ${[0, 6, 12, 18].map((hr) => html`<span key=${hr} class="hour" style=${{ left: `${(hr / 24) * 100}%` }}>${hr}:00</span>`)}
      ${runs.map((s) => {
        const a = pct(Date.parse(s.started_at)), b = pct(Date.parse(s.ended_at || new Date().toISOString()));
        return html`<span key=${s.id} class="run" style=${{ left: `${a}%`, width: `${Math.max(0.3, b - a)}%` }}
          title=${`${clock(s.started_at)} for ${seconds(s.actual_s)}`}></span>`;
      })}
      ${planned.map((t, i) => html`<span key=${i} class="plan" style=${{ left: `${pct(Date.parse(t))}%` }} title=${`planned ${clock(t)}`}></span>`)}
    </div>
  </figure>`;
}

function Chart({ series }) {
  const box = useRef(null);
  useEffect(() => {
    if (!box.current || !series) return undefined;
    const days = [];
    const first = startOfDay(new Date(Date.now() - 29 * DAY_MS)).getTime();
    for (let i = 0; i < 30; i++) days.push((first + i * DAY_MS) / 1000);
    const data = [days, ...series.map((s) => s.minutes)];
    const width = Math.max(280, box.current.clientWidth || 600);
    const bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.8, 40] }) : undefined;
    const plot = new uPlot({
      width, height: 260,
      title: "Minutes run per day",
      scales: { x: { time: true } },
      axes: [{}, { label: "minutes" }],
      series: [{ label: "day" }, ...series.map((s, i) => ({
        label: s.name, stroke: COLORS[i % COLORS.length], fill: `${COLORS[i % COLORS.length]}33`, paths: bars,
      }))],
    }, data, box.current);
    return () => plot.destroy();
  }, [series]);
  return html`<div ref=${box} class="chart" role="img"
    aria-label=${series ? `Minutes run per day over the last 30 days for ${series.map((s) => `${s.name}: ${Math.round(s.minutes.reduce((a, b) => a + b, 0))} minutes in all`).join("; ")}` : "Chart loading"}></div>`;
}

async function sessionsOf(id, since) {
  return api.all(`/devices/${id}/sessions?limit=500&since=${encodeURIComponent(since.toISOString())}`);
}

function perDay(sessions) {
  const first = startOfDay(new Date(Date.now() - 29 * DAY_MS)).getTime();
  const out = new Array(30).fill(0);
  for (const s of sessions) {
    const i = Math.floor((Date.parse(s.started_at) - first) / DAY_MS);
    if (i >= 0 && i < 30) out[i] += (s.actual_s || 0) / 60;
  }
  return out;
}

export function History({ store }) {
  const ids = store.ids;
  const [device, setDevice] = useState(ids[0] ? String(ids[0]) : "");
  const [date, setDate] = useState(() => new Date().toISOString().slice(0, 10));
  const [sessions, setSessions] = useState(null);
  const [planned, setPlanned] = useState([]);
  const [series, setSeries] = useState(null);
  const [error, setError] = useState("");
  const chartIds = ids.slice(0, 6);
  useEffect(() => {
    if (!device) return undefined;
    // Answers for a pump no longer chosen are dropped: they may arrive after the new pump's.
    let current = true;
    const since = new Date(Date.now() - 30 * DAY_MS);
    setError("");
    setSessions(null);
    sessionsOf(device, since).then((list) => current && setSessions(list), (err) => current && setError(err.message));
    api.all(`/schedules?limit=200&device_id=${device}`, "items", 1000).then(
      (list) => current && setPlanned(list.filter((s) => String(s.device_id) === device)
        .flatMap((s) => [...s.next_runs, ...s.runs.map((r) => r.due_at)])),
      () => current && setPlanned([]));
    return () => { current = false; };
  }, [device]);
  useEffect(() => {
    const since = new Date(Date.now() - 30 * DAY_MS);
    Promise.all(chartIds.map(async (id) => ({ name: store.get(id).name, minutes: perDay(await sessionsOf(id, since)) })))
      .then(setSeries, (err) => setError(err.message));
  }, [chartIds.join(",")]);
  const selected = new Date(`${date}T00:00:00`);
  const from = startOfDay(selected).getTime();
  const plannedToday = planned.filter((t) => Date.parse(t) >= from && Date.parse(t) < from + DAY_MS);
  return html`<section aria-labelledby="history-h">
    <h1 id="history-h" tabindex="-1">History</h1>
    <${Message} error=${error} />
    <p class="toolbar">
      <label for="h-device">Pump</label>
      <select id="h-device" value=${device} onChange=${(e) => setDevice(e.currentTarget.value)}>
        ${ids.map((id) => html`<option key=${id} value=${id}>${store.get(id) ? store.get(id).name : id}</option>`)}
      </select>
      <label for="h-day">Day</label>
      <input id="h-day" type="date" value=${date} onInput=${(e) => e.currentTarget.value && setDate(e.currentTarget.value)} />
    </p>
    ${sessions ? html`<${Timeline} sessions=${sessions} planned=${plannedToday} date=${selected} />` : null}
    <h2>Sessions (last 30 days)</h2>
    ${sessions === null ? html`<p>Loading…</p>` : sessions.length === 0 ? html`<p>No sessions.</p>` : html`
      <div class="scroll"><table class="sessions">
        <thead><tr><th scope="col">Started</th><th scope="col">Ended</th><th scope="col">Asked</th>
          <th scope="col">Ran</th><th scope="col">Started by</th><th scope="col">Ended by</th></tr></thead>
        <tbody>${sessions.slice(0, 200).map((s) => html`<tr key=${s.id}>
          <td>${when(s.started_at)}</td><td>${s.ended_at ? when(s.ended_at) : "running"}</td>
          <td>${seconds(s.intended_s)}</td><td>${seconds(s.actual_s)}</td>
          <td>${s.start_cause || ""}</td><td>${s.end_reason || ""}</td></tr>`)}</tbody>
      </table></div>`}
    <h2>Minutes per day, last 30 days${ids.length > 6 ? " (first six pumps)" : ""}</h2>
    <${Chart} series=${series} />
  </section>`;
}
