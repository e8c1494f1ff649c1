// Pumps: a tile per pump, grouped by site when the server names one. Each tile follows its own
// device in the store, so a live change touches that tile only.
import { useEffect, useMemo, useRef, useState } from "../vendor/hooks.js";
import { memo } from "./memo.js";
import { html, seconds, minutes, clock, Message } from "./ui.js";
import { post, del, session } from "./api.js";

function useList(store) {
  const [ids, setIds] = useState(store.ids);
  useEffect(() => store.subscribeList((next) => setIds(next)), [store]);
  return ids;
}

function useDevice(store, id) {
  const [device, setDevice] = useState(store.get(id));
  useEffect(() => store.subscribe(id, (d) => setDevice(d)), [store, id]);
  return device;
}

function useCountdown(endsAt) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (!endsAt) return undefined;
    const t = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(t);
  }, [endsAt]);
  return endsAt ? Math.max(0, (Date.parse(endsAt) - now) / 1000) : null;
}

// Site names from GET /sites, by id; the device list carries only site_id.
export const siteNames = new Map();
// The caller's role in each site (a server admin: manager); controls follow it, the server still decides.
export const siteRoles = new Map();

export function siteOf(device) {
  const site = device.site;
  if (site == null) {
    if (device.site_id == null) return null;
    return siteNames.get(device.site_id) || `Site ${device.site_id}`;
  }
  return typeof site === "object" ? site.name || `Site ${site.id}` : String(site);
}

const STATE_WORDS = { on: "Running", off: "Off", starting: "Starting", stopping: "Stopping", unknown: "Unknown" };
// The state "offline" says no more than the availability badge beside it.

function availability(device) {
  if (device.available === true) return ["Online", "online"];
  if (device.available === false) return ["Offline", "offline"];
  return ["Not heard from yet", "unknown"];
}

const mine = (act) => session.user && (session.user.role === "admin" || act.user_id === session.user.id);

// Its sitesVersion prop (unused here) redraws it when the caller's roles arrive.
const Tile = memo(function Tile({ store, id }) {
  const device = useDevice(store, id);
  const [amount, setAmount] = useState("5");
  const [unit, setUnit] = useState("min");
  const [busy, setBusy] = useState(false);
  const [msg, setMsg] = useState({});
  const running = device && device.running;
  const left = useCountdown(running && running.state === "running" ? running.ends_at : null);
  if (!device) return null;
  const [availText, availClass] = availability(device);
  const state = device.state || "unknown";
  const act = async (what, fn) => {
    setBusy(true);
    setMsg({});
    try {
      const answer = await fn();
      setMsg({ ok: answer && answer.message ? answer.message : what });
    } catch (err) {
      setMsg({ error: err.message });
    } finally {
      setBusy(false);
    }
  };
  const start = (ev) => {
    ev.preventDefault();
    const value = Number(amount);
    const body = { device_id: device.id, [unit === "s" ? "duration_s" : "duration"]: value };
    act("Started.", () => post("/activate", body));
  };
  const role = siteRoles.get(device.site_id);
  const canRun = role !== "viewer";
  const shutdown = () => confirm(`Force ${device.name} off now and cancel its queue?`)
    && act("Shut down.", () => post(`/devices/${device.id}/force-shutdown`));
  const today = device.today || {};
  const quota = device.daily_quota_minutes;
  const labelId = `pump-${device.id}-name`;
  return html`
    <article class=${`tile state-${state} ${availClass}`} aria-labelledby=${labelId}
             data-device-id=${device.id} data-state=${state} data-available=${String(device.available)}>
      <header>
        <h3 id=${labelId}>${device.name}</h3>
        <p class="badges">
          ${state === "offline" ? null : html`<span class=${`badge state ${state}`}>${STATE_WORDS[state] || state}</span>`}
          <span class=${`badge avail ${availClass}`}>${availText}</span>
          ${device.flapping ? html`<span class="badge warn">Switched often</span>` : null}
          ${device.off_owed ? html`<span class="badge warn">OFF not confirmed</span>` : null}
        </p>
      </header>
      ${running ? html`
        <p class="running" aria-live="off">
          ${running.state === "running"
            ? html`Runs for <strong class="countdown" role="timer">${seconds(left)}</strong> more (until ${clock(running.ends_at)})`
            : html`Run ${running.id}: ${running.state}`}
          ${mine(running) ? html` <button type="button" class="danger" disabled=${busy}
              onClick=${() => act("Stopped.", () => del(`/activations/${running.id}`))}>Stop</button>` : null}
        </p>` : null}
      ${device.queue && device.queue.length ? html`
        <div class="queue">
          <p>Queue (${device.queue.length}):</p>
          <ul>
            ${device.queue.map((q) => html`<li key=${q.id}>
              ${seconds(q.duration_s)} ${q.source === "schedule" ? "(schedule)" : ""}
              ${mine(q) ? html`<button type="button" class="link" disabled=${busy}
                  aria-label=${`Cancel queued run of ${seconds(q.duration_s)}`}
                  onClick=${() => act("Cancelled.", () => del(`/activations/${q.id}`))}>Cancel</button>` : null}
            </li>`)}
          </ul>
        </div>` : null}
      <p class="quota">
        Today: ${minutes(today.used_minutes)} used, ${minutes(today.left_minutes)} left
        ${quota ? html` of ${minutes(quota)}` : null}
        ${quota ? html`<meter min="0" max=${quota} value=${Math.min(quota, today.used_minutes || 0)}
            aria-label=${`Quota used on ${device.name}`}></meter>` : null}
      </p>
      ${canRun ? html`<form class="start" onSubmit=${start}>
        <label for=${`dur-${device.id}`}>Run for</label>
        <input id=${`dur-${device.id}`} type="number" min="0" step="any" required value=${amount}
               onInput=${(e) => setAmount(e.currentTarget.value)} />
        <label class="sr" for=${`unit-${device.id}`}>Unit</label>
        <select id=${`unit-${device.id}`} value=${unit} onChange=${(e) => setUnit(e.currentTarget.value)}>
          <option value="min">minutes</option>
          <option value="s">seconds</option>
        </select>
        <button type="submit" disabled=${busy}>${running ? "Queue" : "Start"}</button>
      </form>` : html`<p class="muted">You may watch this pump; running it is for its site's operators.</p>`}
      ${role === "manager" ? html`<p class="actions"><button type="button" class="danger" disabled=${busy}
          onClick=${shutdown}>Force shutdown<span class="sr"> ${device.name}</span></button></p>` : null}
      <${Message} ...${msg} />
    </article>`;
});

// The first tiles render at once; the rest as placeholders (the pump's name) that become full
// tiles as they near the viewport, so a thousand pumps cost a thousand small boxes, not forms.
const EAGER = 60;
const slots = new Map();
let observer = null;
function watch(el, show) {
  if (!observer) {
    observer = new IntersectionObserver((entries) => {
      for (const e of entries) {
        if (!e.isIntersecting) continue;
        const fn = slots.get(e.target);
        observer.unobserve(e.target);
        slots.delete(e.target);
        if (fn) fn();
      }
    }, { rootMargin: "800px 0px" });
  }
  slots.set(el, show);
  observer.observe(el);
  return () => { observer.unobserve(el); slots.delete(el); };
}

function Slot({ store, id, eager, sitesVersion }) {
  const [shown, setShown] = useState(eager);
  const ref = useRef(null);
  useEffect(() => (shown || !ref.current ? undefined : watch(ref.current, () => setShown(true))), [shown]);
  if (shown) return html`<${Tile} store=${store} id=${id} sitesVersion=${sitesVersion} />`;
  const d = store.get(id);
  return html`<div class="tile slot" ref=${ref}><h3>${d ? d.name : `Pump ${id}`}</h3></div>`;
}

export function Pumps({ store, loaded, loadError, sitesVersion }) {
  const ids = useList(store);
  const [filter, setFilter] = useState("");
  const groups = useMemo(() => {
    const out = new Map();
    const needle = filter.trim().toLowerCase();
    for (const id of ids) {
      const d = store.get(id);
      if (!d) continue;
      if (needle && !d.name.toLowerCase().includes(needle)) continue;
      const site = siteOf(d) || "";
      if (!out.has(site)) out.set(site, []);
      out.get(site).push(id);
    }
    return out;
  }, [ids, filter, sitesVersion]);
  return html`
    <section aria-labelledby="pumps-h">
      <h1 id="pumps-h" tabindex="-1">Pumps</h1>
      <p class="toolbar">
        <label for="pump-filter">Find a pump</label>
        <input id="pump-filter" type="search" value=${filter} onInput=${(e) => setFilter(e.currentTarget.value)} />
        <span class="count">${ids.length} pump${ids.length === 1 ? "" : "s"}</span>
      </p>
      ${loadError ? html`<${Message} error=${loadError} />` : null}
      ${!loaded ? html`<p>Loading pumps…</p>` : ids.length === 0 ? html`<p>No pumps yet. An admin adds them under Devices.</p>` : null}
      ${[...groups.entries()].map(([site, list]) => html`
        <section class="site" key=${site || "-"} aria-label=${site ? `Site ${site}` : "All pumps"}>
          ${site ? html`<h2>${site}</h2>` : null}
          <div class="tiles">
            ${list.map((id, i) => html`<${Slot} key=${id} store=${store} id=${id} eager=${i < EAGER} sitesVersion=${sitesVersion} />`)}
          </div>
        </section>`)}
    </section>`;
}
