// The console's shell: signing in, the live feed, navigation between screens.
import { render } from "../vendor/preact.js";
import { useEffect, useRef, useState } from "../vendor/hooks.js";
import { html, zone, Message, clock } from "./ui.js";
import * as api from "./api.js";
import { DeviceStore } from "./store.js";
import { Live } from "./live.js";
import { Pumps, siteNames, siteRoles } from "./pumps.js";
import { Schedules } from "./schedules.js";
import { History } from "./history.js";
import { Accounts, Devices, Audit, System, EmergencyStop } from "./admin.js";
import { Alerts, alertFrom, flapped } from "./alerts.js";
import { Sites } from "./sites.js";

const store = new DeviceStore();
const bus = new EventTarget();  // live events for screens other than the tiles
const alerts = [];
const perf = (window.pumplinkPerf = { frames: 0 });

const SCREENS = [
  ["pumps", "Pumps", null],
  ["schedules", "Schedules", null],
  ["history", "History", null],
  ["alerts", "Alerts", null],
  ["sites", "Sites", null],
  ["accounts", "Accounts", "admin"],
  ["devices", "Devices", "admin"],
  ["audit", "Audit log", "admin"],
  ["system", "System", "admin"],
];

function route() {
  const name = (location.hash || "#/pumps").replace(/^#\/?/, "");
  return SCREENS.some(([n]) => n === name) ? name : "pumps";
}

// A device's full view is read again shortly after its events (queue, today's use), once per
// burst; a burst touching many devices (an emergency stop) is one read of the whole list.
const MANY = 20;
const stale = new Set();
let rereadTimer = null;
function reread(id, delay = 250) {
  stale.add(id);
  if (rereadTimer) return;
  rereadTimer = setTimeout(async () => {
    rereadTimer = null;
    const ids = [...stale];
    stale.clear();
    if (ids.length > MANY) return loadDevices().catch(() => {});
    await Promise.all(ids.map(async (one) => {
      try {
        const fresh = await api.get(`/devices/${one}`);
        raise(flapped(store.get(one), fresh));
        store.put(fresh);
      } catch (err) {
        if (err.status === 404) store.remove(one);
      }
    }));
  }, delay);
}

async function loadDevices() {
  const list = await api.all("/devices", "devices");
  for (const d of list) raise(flapped(store.get(d.id), d));
  store.replaceAll(list);
}

function onEvent(ev) {
  perf.frames += 1;
  if (ev.type === "snapshot") {
    for (const s of ev.devices || []) {
      const d = store.get(s.device_id);
      if (d && (d.state !== s.state || d.available !== s.available)) {
        store.patch(s.device_id, { state: s.state, available: s.available });
        reread(s.device_id);
      }
    }
    return;
  }
  if (ev.type === "device.state") {
    const before = store.get(ev.device_id);
    store.patch(ev.device_id, { state: ev.state, available: ev.available });
    perf.lastPatch = { id: ev.device_id, state: ev.state, at: performance.now() };
    reread(ev.device_id);
    if (before) raise(alertFrom(ev, before));
  } else if (ev.type === "activation") {
    reread(ev.device_id, 50);
    raise(alertFrom(ev, store.get(ev.device_id)));
  } else if (ev.type === "schedule") {
    raise(alertFrom(ev, store.get(ev.device_id)));
  }
  bus.dispatchEvent(new CustomEvent(ev.type, { detail: ev }));
}

function raise(alert) {
  if (!alert) return;
  alerts.unshift(alert);
  alerts.length = Math.min(alerts.length, 200);
  bus.dispatchEvent(new CustomEvent("alert", { detail: alert }));
}

function SignIn({ notice }) {
  const [mode, setMode] = useState("signin");
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [msg, setMsg] = useState({});
  const [pending, setPending] = useState(false);
  const [busy, setBusy] = useState(false);
  const submit = async (ev) => {
    ev.preventDefault();
    setBusy(true);
    setMsg({});
    try {
      if (mode === "register") {
        const answer = await api.register(email, password);
        if (answer.user && answer.user.role === "pending") setPending(true);
        else await api.signIn(email, password);
      } else {
        await api.signIn(email, password);
      }
    } catch (err) {
      if (err.code === "approval_required") setPending(true);
      else setMsg({ error: err.message });
    } finally {
      setBusy(false);
    }
  };
  if (pending) {
    return html`<main id="main" class="narrow">
      <h1 tabindex="-1">Waiting for approval</h1>
      <p class="msg ok" role="status">Your account <strong>${email}</strong> is waiting for an administrator's approval.
        You can sign in once it is approved.</p>
      <button type="button" onClick=${() => { setPending(false); setMode("signin"); }}>Back to sign in</button>
    </main>`;
  }
  const registering = mode === "register";
  return html`<main id="main" class="narrow">
    <h1 tabindex="-1">${registering ? "Create an account" : "Sign in to PumpLink"}</h1>
    ${notice ? html`<p class="msg" role="status">${notice}</p>` : null}
    <form onSubmit=${submit} class="stack">
      <label for="email">Email</label>
      <input id="email" type="email" autocomplete="username" required value=${email}
             onInput=${(e) => setEmail(e.currentTarget.value)} />
      <label for="password">Password</label>
      <input id="password" type="password" required minlength=${registering ? 8 : undefined}
             autocomplete=${registering ? "new-password" : "current-password"} value=${password}
             onInput=${(e) => setPassword(e.currentTarget.value)} />
      <button type="submit" disabled=${busy}>${registering ? "Create account" : "Sign in"}</button>
    </form>
    <${Message} ...${msg} />
    <p>${registering ? "Have an account? " : "New here? "}
      <button type="button" class="link" onClick=${() => { setMode(registering ? "signin" : "register"); setMsg({}); }}>
        ${registering ? "Sign in" : "Create an account"}</button></p>
  </main>`;
}

function Console({ user }) {
  const [screen, setScreen] = useState(route());
  const [online, setOnline] = useState(null);
  const [offlineWhy, setOfflineWhy] = useState("");
  const [loaded, setLoaded] = useState(false);
  const [loadError, setLoadError] = useState("");
  const [menu, setMenu] = useState(false);
  const [toast, setToast] = useState(null);
  const [sitesVersion, setSitesVersion] = useState(0);
  const heading = useRef(null);
  useEffect(() => {
    const onHash = () => { setScreen(route()); setMenu(false); };
    addEventListener("hashchange", onHash);
    return () => removeEventListener("hashchange", onHash);
  }, []);
  useEffect(() => {
    const main = document.getElementById("main");
    const h1 = main && main.querySelector("h1");
    if (h1 && heading.current !== screen) { if (heading.current) h1.focus(); heading.current = screen; }
  }, [screen]);
  useEffect(() => {
    let alive = true;
    const load = () => loadDevices().then(() => { if (alive) { setLoaded(true); setLoadError(""); } },
      (err) => { if (alive) setLoadError(err.message); });
    load();
    api.get("/sites").then((d) => {
      if (!alive) return;
      for (const s of d.sites) { siteNames.set(s.id, s.name); siteRoles.set(s.id, s.role); }
      setSitesVersion((v) => v + 1);
    }, () => {});
    const live = new Live({
      onEvent,
      onStatus: (up, why) => { setOnline(up); setOfflineWhy(why || ""); },
      onReconnect: load,
    });
    live.start();
    const onAlert = (e) => setToast(e.detail);
    bus.addEventListener("alert", onAlert);
    return () => { alive = false; live.stop(); bus.removeEventListener("alert", onAlert); };
  }, []);
  const admin = user.role === "admin";
  const screens = SCREENS.filter(([, , role]) => !role || admin);
  const body = {
    pumps: html`<${Pumps} store=${store} loaded=${loaded} loadError=${loadError} sitesVersion=${sitesVersion} />`,
    schedules: html`<${Schedules} store=${store} bus=${bus} />`,
    history: html`<${History} store=${store} />`,
    alerts: html`<${Alerts} alerts=${alerts} bus=${bus} />`,
    sites: html`<${Sites} />`,
    accounts: admin ? html`<${Accounts} />` : null,
    devices: admin ? html`<${Devices} store=${store} />` : null,
    audit: admin ? html`<${Audit} />` : null,
    system: admin ? html`<${System} />` : null,
  }[screen];
  return html`
    <header class="top">
      <p class="brand">PumpLink</p>
      <button type="button" class="menu" aria-expanded=${menu} aria-controls="nav"
              onClick=${() => setMenu(!menu)}>Menu</button>
      <nav id="nav" aria-label="Screens" class=${menu ? "open" : ""} onClick=${(e) => e.target.closest("a") && setMenu(false)}>
        <ul>${screens.map(([name, label]) => html`<li key=${name}>
          <a href=${`#/${name}`} aria-current=${screen === name ? "page" : undefined}>${label}</a></li>`)}</ul>
      </nav>
      <p class=${`live ${online === false ? "offline" : online ? "online" : ""}`} role="status" data-live=${String(online)}>
        ${online === false ? `Offline — reconnecting. ${offlineWhy}` : online ? "Live" : "Connecting…"}
      </p>
      <p class="who">${user.email} (${user.role})
        ${admin ? html`<${EmergencyStop} />` : null}
        <button type="button" onClick=${() => api.signOut()}>Sign out</button></p>
    </header>
    <main id="main">${body}</main>
    <div class="toast" role="status" aria-live="polite">${toast ? `${clock(toast.at)} ${toast.text}` : ""}</div>
    <footer><p>Times are in ${zone}.</p></footer>`;
}

function App() {
  const [user, setUser] = useState(api.session.access || api.session.refresh ? api.session.user : null);
  const [notice, setNotice] = useState("");
  useEffect(() => api.onSession((s, reason) => {
    setUser(s.access || s.refresh ? s.user : null);
    if (!s.refresh && reason && reason !== "signed-out" && reason !== "tokens") setNotice(reason);
    else if (reason === "signed-out") setNotice("You are signed out.");
  }), []);
  if (!user) return html`<${SignIn} notice=${notice} />`;
  return html`<${Console} key=${user.id} user=${user} />`;
}

const root = document.getElementById("root");
root.textContent = "";
if (api.restore()) api.refresh().catch(() => {});
render(html`<${App} />`, root);
