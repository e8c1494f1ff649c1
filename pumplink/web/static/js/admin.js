// Screens for admins: accounts, devices, the audit log, system status and the emergency stop.
import { useEffect, useRef, useState } from "../vendor/hooks.js";
import { html, when, Message } from "./ui.js";
import * as api from "./api.js";
import { Credentials } from "./credentials.js";

// Data for a screen, read again when ``deps`` change; only the latest read's answer is kept
// (filters typed quickly must not be overwritten by an earlier, slower answer).
function useLoad(fn, deps = []) {
  const [data, setData] = useState(null);
  const [error, setError] = useState("");
  const latest = useRef(0);
  const load = () => {
    const n = ++latest.current;
    return fn().then((d) => { if (n === latest.current) { setData(d); setError(""); } },
      (err) => { if (n === latest.current) setError(err.message); });
  };
  useEffect(() => { load(); }, deps);
  return [data, error, load];
}

function UserRow({ u, onChange }) {
  const [quota, setQuota] = useState(u.daily_quota_minutes == null ? "" : String(u.daily_quota_minutes));
  const [msg, setMsg] = useState({});
  const act = async (fn, ok) => {
    setMsg({});
    try { await fn(); setMsg({ ok }); onChange(); } catch (err) { setMsg({ error: err.message }); }
  };
  const setRole = (role, ok) => act(() => api.patch(`/users/${u.id}`, { role }), ok);
  return html`<tr data-user=${u.email}>
    <th scope="row">${u.email}</th>
    <td class="role">${u.role === "pending" ? "waiting for approval" : u.role}</td>
    <td>
      <form class="inline" onSubmit=${(e) => { e.preventDefault(); act(() => api.patch(`/users/${u.id}`, { daily_quota_minutes: quota === "" ? null : Number(quota) }), "Quota saved."); }}>
        <label class="sr" for=${`q-${u.id}`}>Daily quota of ${u.email} in minutes</label>
        <input id=${`q-${u.id}`} type="number" min="0" step="any" placeholder="default" value=${quota}
               onInput=${(e) => setQuota(e.currentTarget.value)} />
        <button type="submit">Save<span class="sr"> quota of ${u.email}</span></button>
      </form>
    </td>
    <td class="actions">
      ${u.role === "pending" ? html`<button type="button" onClick=${() => setRole("user", "Approved.")}>Approve<span class="sr"> ${u.email}</span></button>` : null}
      ${u.role === "user" ? html`<button type="button" onClick=${() => setRole("admin", "Now an admin.")}>Make admin<span class="sr"> ${u.email}</span></button>` : null}
      ${u.role !== "pending" ? html`<button type="button" onClick=${() => setRole(u.role === "admin" ? "user" : "pending", "Demoted.")}>Demote<span class="sr"> ${u.email}</span></button>` : null}
      <button type="button" class="danger" onClick=${() => confirm(`Delete the account ${u.email}?`) && act(() => api.del(`/users/${u.id}`), "Deleted.")}>Delete<span class="sr"> ${u.email}</span></button>
      <${Message} ...${msg} />
    </td>
  </tr>`;
}

export function Accounts() {
  const [users, error, load] = useLoad(() => api.all("/users?limit=500"));
  return html`<section aria-labelledby="accounts-h">
    <h1 id="accounts-h" tabindex="-1">Accounts</h1>
    <${Message} error=${error} />
    ${users === null ? html`<p>Loading…</p>` : html`<div class="scroll"><table class="users">
      <thead><tr><th scope="col">Email</th><th scope="col">Role</th><th scope="col">Daily quota</th><th scope="col">Actions</th></tr></thead>
      <tbody>${users.map((u) => html`<${UserRow} key=${u.id} u=${u} onChange=${load} />`)}</tbody>
    </table></div>`}
  </section>`;
}

function DeviceForm({ device, onDone, onCancel }) {
  const [name, setName] = useState(device ? device.name : "");
  const [protocol, setProtocol] = useState(device ? device.protocol : "pumplink");
  const [quota, setQuota] = useState(device && device.daily_quota_minutes != null ? String(device.daily_quota_minutes) : "");
  const [maxRun, setMaxRun] = useState(device ? String(device.max_run_minutes) : "60");
  const [msg, setMsg] = useState({});
  const idp = device ? `d${device.id}` : "new";
  const submit = async (ev) => {
    ev.preventDefault();
    setMsg({});
    const body = { name, protocol, max_run_minutes: Number(maxRun) };
    if (quota !== "") body.daily_quota_minutes = Number(quota);
    else if (device) body.daily_quota_minutes = null;
    try {
      const saved = device ? await api.patch(`/devices/${device.id}`, body) : await api.post("/devices", body);
      onDone(saved, !device);
      if (!device) { setName(""); setQuota(""); }
    } catch (err) {
      setMsg({ error: err.message });
    }
  };
  return html`<form class="card stack" onSubmit=${submit} aria-label=${device ? `Edit ${device.name}` : "New device"}>
    ${device ? null : html`<h2>New device</h2>`}
    <label for=${`${idp}-name`}>Name</label>
    <input id=${`${idp}-name`} required maxlength="100" value=${name} onInput=${(e) => setName(e.currentTarget.value)} />
    <label for=${`${idp}-protocol`}>Protocol</label>
    <select id=${`${idp}-protocol`} value=${protocol} onChange=${(e) => setProtocol(e.currentTarget.value)}>
      <option value="pumplink">PumpLink</option><option value="legacy">Legacy (one device only)</option>
    </select>
    <label for=${`${idp}-quota`}>Daily quota (minutes; empty for the default)</label>
    <input id=${`${idp}-quota`} type="number" min="0" step="any" value=${quota} onInput=${(e) => setQuota(e.currentTarget.value)} />
    <label for=${`${idp}-max`}>Longest run (minutes)</label>
    <input id=${`${idp}-max`} type="number" min="0" step="any" required value=${maxRun} onInput=${(e) => setMaxRun(e.currentTarget.value)} />
    <p class="actions"><button type="submit">${device ? "Save" : "Create device"}</button>
      ${onCancel ? html`<button type="button" onClick=${onCancel}>Cancel</button>` : null}</p>
    <${Message} ...${msg} />
  </form>`;
}

export function Devices({ store }) {
  const [list, error, load] = useLoad(() => api.all("/devices", "devices"));
  const [editing, setEditing] = useState(null);
  const [created, setCreated] = useState(null);
  const [msg, setMsg] = useState({});
  const done = (saved, isNew) => {
    store.put(saved);
    setEditing(null);
    load();
    if (isNew) {
      api.post(`/devices/${saved.id}/broker-credentials`).then((creds) => setCreated({ device: saved, creds }),
        (err) => setCreated({ device: saved, error: `No firmware credentials: ${err.message}` }));
    }
  };
  const remove = async (d) => {
    if (!confirm(`Delete ${d.name}? It is sent OFF first.`)) return;
    setMsg({});
    try { setMsg({ ok: (await api.del(`/devices/${d.id}`)).message }); store.remove(d.id); load(); } catch (err) { setMsg({ error: err.message }); }
  };
  return html`<section aria-labelledby="devices-h">
    <h1 id="devices-h" tabindex="-1">Devices</h1>
    <${DeviceForm} onDone=${done} />
    ${created ? html`<${Credentials} ...${created} title=${`${created.device.name} was created (device ${created.device.id})`}
      onDone=${() => setCreated(null)} />` : null}
    <${Message} error=${error} />
    <${Message} ...${msg} />
    ${list === null ? html`<p>Loading…</p>` : html`<div class="scroll"><table class="devices">
      <thead><tr><th scope="col">Id</th><th scope="col">Name</th><th scope="col">Protocol</th><th scope="col">Daily quota</th><th scope="col">Longest run</th><th scope="col">Actions</th></tr></thead>
      <tbody>${list.map((d) => editing === d.id ? html`<tr key=${d.id}><td colspan="6">
          <${DeviceForm} device=${d} onDone=${done} onCancel=${() => setEditing(null)} /></td></tr>` : html`<tr key=${d.id}>
        <td>${d.id}</td><th scope="row">${d.name}</th><td>${d.protocol}</td><td>${d.daily_quota_minutes} min</td><td>${d.max_run_minutes} min</td>
        <td class="actions"><button type="button" onClick=${() => setEditing(d.id)}>Edit<span class="sr"> ${d.name}</span></button>
          <button type="button" class="danger" onClick=${() => remove(d)}>Delete<span class="sr"> ${d.name}</span></button></td></tr>`)}</tbody>
    </table></div>`}
  </section>`;
}

export function Audit() {
  const [since, setSince] = useState("");
  const [until, setUntil] = useState("");
  const [action, setAction] = useState("");
  const [actor, setActor] = useState("");
  const [offset, setOffset] = useState(0);
  const query = () => {
    const q = new URLSearchParams({ limit: "100", offset: String(offset) });
    if (since) q.set("since", new Date(since).toISOString());
    if (until) q.set("until", new Date(until).toISOString());
    return `/audit?${q}`;
  };
  const [page, error] = useLoad(() => api.get(query()), [since, until, offset]);
  const items = (page ? page.items : []).filter((e) =>
    (!action || e.action.includes(action)) && (!actor || String(e.actor_id) === actor.trim()));
  return html`<section aria-labelledby="audit-h">
    <h1 id="audit-h" tabindex="-1">Audit log</h1>
    <form class="toolbar filters" onSubmit=${(e) => e.preventDefault()} aria-label="Filters">
      <label for="a-since">From</label><input id="a-since" type="datetime-local" value=${since} onInput=${(e) => { setSince(e.currentTarget.value); setOffset(0); }} />
      <label for="a-until">Until</label><input id="a-until" type="datetime-local" value=${until} onInput=${(e) => { setUntil(e.currentTarget.value); setOffset(0); }} />
      <label for="a-action">Action contains</label><input id="a-action" value=${action} onInput=${(e) => setAction(e.currentTarget.value)} />
      <label for="a-actor">Actor id</label><input id="a-actor" inputmode="numeric" value=${actor} onInput=${(e) => setActor(e.currentTarget.value)} />
    </form>
    <${Message} error=${error} />
    ${page === null ? html`<p>Loading…</p>` : html`<div class="scroll"><table class="audit">
      <thead><tr><th scope="col">When</th><th scope="col">Actor</th><th scope="col">Action</th><th scope="col">Target</th><th scope="col">Detail</th></tr></thead>
      <tbody>${items.map((e) => html`<tr key=${e.id}><td>${when(e.at)}</td><td>${e.actor_id ?? "system"}</td>
        <td class="action">${e.action}</td><td>${e.target}</td><td><code>${e.detail ? JSON.stringify(e.detail) : ""}</code></td></tr>`)}</tbody>
    </table></div>
    <p class="actions">
      <button type="button" disabled=${offset === 0} onClick=${() => setOffset(Math.max(0, offset - 100))}>Newer</button>
      <button type="button" disabled=${!page || page.items.length < 100} onClick=${() => setOffset(offset + 100)}>Older</button>
    </p>`}
  </section>`;
}

const METRICS = [
  ["pumplink_broker_connected", "MQTT link up (1 = yes)"],
  ["pumplink_websocket_clients", "Live clients connected"],
  ["pumplink_queued_activations", "Runs waiting in queues"],
  ["pumplink_scheduler_heap_size", "Schedules waiting to fire"],
  ["pumplink_devices", "Devices by state"],
];

function metricLines(text) {
  const out = {};
  for (const line of String(text).split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const [key, value] = line.split(/ (?=[^ ]+$)/);
    const name = key.split("{")[0];
    (out[name] = out[name] || []).push([key.slice(name.length), value]);
  }
  return out;
}

export function System() {
  const [tick, setTick] = useState(0);
  const [ready, setReady] = useState(null);
  const [metrics, setMetrics] = useState(null);
  const [error, setError] = useState("");
  useEffect(() => {
    api.plain("/ready").then(setReady, (err) => (err.body && err.body.checks ? setReady(err.body) : setError(err.message)));
    api.plain("/metrics").then((t) => setMetrics(metricLines(t)), (err) => setError(err.message));
    const t = setTimeout(() => setTick(tick + 1), 5000);
    return () => clearTimeout(t);
  }, [tick]);
  return html`<section aria-labelledby="system-h">
    <h1 id="system-h" tabindex="-1">System</h1>
    <${Message} error=${error} />
    <h2>Ready</h2>
    ${ready ? html`<p class=${ready.status === "ready" ? "msg ok" : "msg error"} data-ready=${ready.status}>
      ${ready.status === "ready" ? "Everything is up." : ready.error}</p>
      <dl class="checks">${Object.entries(ready.checks).map(([k, v]) => html`<dt key=${k}>${k === "broker" ? "Broker link" : k === "database" ? "Database" : k}</dt><dd>${v}</dd>`)}
      <dt>Scheduler</dt><dd>${metrics && metrics.pumplink_scheduler_heap_size ? `${Number(metrics.pumplink_scheduler_heap_size[0][1])} schedules waiting` : "—"}</dd></dl>` : html`<p>Loading…</p>`}
    <h2>Metrics</h2>
    ${metrics ? html`<dl class="checks">${METRICS.map(([name, label]) => html`<dt key=${name}>${label}</dt>
      <dd>${(metrics[name] || []).map(([labels, v]) => `${labels.replace(/[{}"]/g, "").replace("state=", "") || ""}${labels ? ": " : ""}${Number(v)}`).join(", ") || "—"}</dd>`)}</dl>` : null}
  </section>`;
}

export function EmergencyStop() {
  const dialog = useRef(null);
  const [msg, setMsg] = useState({});
  const [busy, setBusy] = useState(false);
  const stop = async () => {
    setBusy(true);
    setMsg({});
    try { setMsg({ ok: (await api.post("/admin/emergency-stop")).message }); } catch (err) { setMsg({ error: err.message }); }
    setBusy(false);
  };
  return html`<span class="estop">
    <button type="button" class="danger" onClick=${() => { setMsg({}); dialog.current.showModal(); }}>Emergency stop</button>
    <dialog ref=${dialog} aria-labelledby="estop-h">
      <h2 id="estop-h">Stop every pump?</h2>
      <p>Every pump is sent OFF at once and every queue is cancelled. Schedules stay.</p>
      <p class="actions">
        <button type="button" class="danger" disabled=${busy} onClick=${stop}>Stop every pump</button>
        <button type="button" onClick=${() => dialog.current.close()}>Close</button>
      </p>
      <${Message} ...${msg} />
    </dialog>
  </span>`;
}
