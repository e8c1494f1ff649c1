// Sites: the caller's sites and role in each; for a site's managers its members, invitations and audit log.
import { useEffect, useRef, useState } from "../vendor/hooks.js";
import { html, when, Message } from "./ui.js";
import * as api from "./api.js";
import { Credentials } from "./credentials.js";

const ROLES = [["viewer", "Viewer"], ["operator", "Operator"], ["manager", "Manager"]];

function RoleSelect({ id, value, onChange, label }) {
  return html`<label class="sr" for=${id}>${label}</label>
    <select id=${id} value=${value} onChange=${(e) => onChange(e.currentTarget.value)}>
      ${ROLES.map(([v, l]) => html`<option key=${v} value=${v}>${l}</option>`)}</select>`;
}

function MemberRow({ site, m, onChange }) {
  const [msg, setMsg] = useState({});
  const act = async (fn) => {
    setMsg({});
    try { const r = await fn(); setMsg({ ok: r && r.message ? r.message : "Saved." }); onChange(); } catch (err) { setMsg({ error: err.message }); }
  };
  const base = `/sites/${site.id}/members/${m.user_id}`;
  return html`<tr data-member=${m.email}>
    <th scope="row">${m.email}</th>
    <td><${RoleSelect} id=${`role-${site.id}-${m.user_id}`} value=${m.role} label=${`Role of ${m.email}`}
          onChange=${(role) => act(() => api.patch(base, { role }))} /></td>
    <td class="actions">
      <button type="button" class="danger" onClick=${() => confirm(`Remove ${m.email} from ${site.name}?`) && act(() => api.del(base))}>Remove<span class="sr"> ${m.email}</span></button>
      <${Message} ...${msg} />
    </td>
  </tr>`;
}

function SiteAudit({ site, version }) {
  const [page, setPage] = useState(null);
  const [error, setError] = useState("");
  useEffect(() => {
    api.get(`/sites/${site.id}/audit?limit=50`).then((p) => { setPage(p); setError(""); }, (err) => setError(err.message));
  }, [site.id, version]);
  return html`<h3>Audit log of ${site.name}</h3>
    <${Message} error=${error} />
    ${page === null ? html`<p>Loading…</p>` : html`<div class="scroll"><table class="audit" data-site-audit=${site.id}>
      <thead><tr><th scope="col">When</th><th scope="col">Actor</th><th scope="col">Action</th><th scope="col">Target</th></tr></thead>
      <tbody>${page.items.map((e) => html`<tr key=${e.id}><td>${when(e.at)}</td><td>${e.actor_id ?? "system"}</td>
        <td class="action">${e.action}</td><td>${e.target}</td></tr>`)}</tbody></table></div>`}`;
}

// The site's pumps, each with a new firmware login on demand (shown once).
function SitePumps({ site }) {
  const [list, setList] = useState(null);
  const [error, setError] = useState("");
  const [shown, setShown] = useState(null);
  useEffect(() => {
    api.all("/devices", "devices").then((all) => setList(all.filter((d) => d.site_id === site.id)), (err) => setError(err.message));
  }, [site.id]);
  const issue = (device) => api.post(`/devices/${device.id}/broker-credentials`).then(
    (creds) => setShown({ device, creds }), (err) => setShown({ device, error: err.message }));
  return html`<h3>Pumps</h3>
    <${Message} error=${error} />
    ${list === null ? html`<p>Loading…</p>` : list.length === 0 ? html`<p>No pumps here yet; a server admin adds them.</p>`
      : html`<ul class="site-pumps">${list.map((d) => html`<li key=${d.id}>${d.name}
        <button type="button" onClick=${() => issue(d)}>New firmware login<span class="sr"> for ${d.name}</span></button></li>`)}</ul>`}
    ${shown ? html`<${Credentials} ...${shown} title=${`Firmware login for ${shown.device.name}`} onDone=${() => setShown(null)} />` : null}`;
}

function Manage({ site }) {
  const [list, setList] = useState(null);
  const [error, setError] = useState("");
  const [email, setEmail] = useState("");
  const [role, setRole] = useState("operator");
  const [inviteRole, setInviteRole] = useState("operator");
  const [hours, setHours] = useState("72");
  const [invite, setInvite] = useState(null);
  const [msg, setMsg] = useState({});
  const [version, setVersion] = useState(0);
  const load = () => {
    setVersion((v) => v + 1);
    return api.get(`/sites/${site.id}/members`).then((d) => { setList(d.members); setError(""); }, (err) => setError(err.message));
  };
  useEffect(() => { load(); }, [site.id]);
  const add = async (ev) => {
    ev.preventDefault();
    setMsg({});
    try { const r = await api.post(`/sites/${site.id}/members`, { email: email.trim(), role }); setMsg({ ok: `${r.email} is now ${r.role} here.` }); setEmail(""); load(); } catch (err) { setMsg({ error: err.message }); }
  };
  const makeInvite = async (ev) => {
    ev.preventDefault();
    setMsg({});
    try { setInvite(await api.post(`/sites/${site.id}/invitations`, { role: inviteRole, expires_in_hours: Number(hours) })); load(); } catch (err) { setMsg({ error: err.message }); }
  };
  const p = `s${site.id}`;
  return html`
    <h3>Members</h3>
    <${Message} error=${error} />
    ${list === null ? html`<p>Loading…</p>` : html`<div class="scroll"><table class="members" data-members=${site.id}>
      <thead><tr><th scope="col">Email</th><th scope="col">Role</th><th scope="col">Actions</th></tr></thead>
      <tbody>${list.map((m) => html`<${MemberRow} key=${m.user_id} site=${site} m=${m} onChange=${load} />`)}</tbody></table></div>`}
    <form class="card stack" onSubmit=${add} aria-label=${`Add a member to ${site.name}`}>
      <h4>Add an existing account</h4>
      <label for=${`${p}-email`}>Email</label>
      <input id=${`${p}-email`} type="email" required value=${email} onInput=${(e) => setEmail(e.currentTarget.value)} />
      <label for=${`${p}-role`}>Role</label>
      <select id=${`${p}-role`} value=${role} onChange=${(e) => setRole(e.currentTarget.value)}>
        ${ROLES.map(([v, l]) => html`<option key=${v} value=${v}>${l}</option>`)}</select>
      <p class="actions"><button type="submit">Add member</button></p>
    </form>
    <form class="card stack" onSubmit=${makeInvite} aria-label=${`Invite to ${site.name}`}>
      <h4>Invitation code</h4>
      <label for=${`${p}-irole`}>Role</label>
      <select id=${`${p}-irole`} value=${inviteRole} onChange=${(e) => setInviteRole(e.currentTarget.value)}>
        ${ROLES.map(([v, l]) => html`<option key=${v} value=${v}>${l}</option>`)}</select>
      <label for=${`${p}-hours`}>Valid for (hours)</label>
      <input id=${`${p}-hours`} type="number" min="0.01" max="720" step="any" required value=${hours} onInput=${(e) => setHours(e.currentTarget.value)} />
      <p class="actions"><button type="submit">Create invitation</button></p>
    </form>
    ${invite ? html`<div class="card once" role="status">
      <p>Invitation code for ${invite.role === "operator" ? "an" : "a"} ${invite.role}, shown only now (single use, until ${when(invite.expires_at)}):</p>
      <p><code class="invite-code">${invite.code}</code></p>
      <button type="button" onClick=${() => setInvite(null)}>Done</button></div>` : null}
    <${Message} ...${msg} />
    <${SitePumps} site=${site} />
    <${SiteAudit} site=${site} version=${version} />`;
}

function Redeem({ onJoined }) {
  const [code, setCode] = useState("");
  const [msg, setMsg] = useState({});
  const submit = async (ev) => {
    ev.preventDefault();
    setMsg({});
    try { const s = await api.post("/invitations/redeem", { code: code.trim() }); setMsg({ ok: `You joined ${s.name} as ${s.role}.` }); setCode(""); onJoined(); } catch (err) { setMsg({ error: err.message }); }
  };
  return html`<form class="card stack" onSubmit=${submit} aria-label="Redeem an invitation code">
    <h2>Redeem a code</h2>
    <label for="redeem-code">Invitation code</label>
    <input id="redeem-code" required minlength="8" maxlength="100" autocomplete="off" value=${code} onInput=${(e) => setCode(e.currentTarget.value)} />
    <p class="actions"><button type="submit">Join site</button></p>
    <${Message} ...${msg} />
  </form>`;
}

export function Sites({ onChange }) {
  const [sites, setSites] = useState(null);
  const [error, setError] = useState("");
  const [open, setOpen] = useState(null);
  const latest = useRef(0);
  const load = () => {
    const n = ++latest.current;
    api.get("/sites").then((d) => { if (n === latest.current) { setSites(d.sites); setError(""); if (onChange) onChange(d.sites); } },
      (err) => setError(err.message));
  };
  useEffect(() => { load(); }, []);
  const managed = (sites || []).filter((s) => s.role === "manager");
  const current = managed.find((s) => s.id === open) || managed[0];
  return html`<section aria-labelledby="sites-h">
    <h1 id="sites-h" tabindex="-1">Sites</h1>
    <${Message} error=${error} />
    ${sites === null ? html`<p>Loading…</p>` : html`<ul class="sites">${sites.map((s) => html`<li key=${s.id} data-site=${s.id}>
      <strong>${s.name}</strong> — you are ${s.role}${s.is_default ? " (default site)" : ""}</li>`)}</ul>`}
    ${managed.length > 1 ? html`<p><label for="site-pick">Manage</label>
      <select id="site-pick" value=${current ? current.id : ""} onChange=${(e) => setOpen(Number(e.currentTarget.value))}>
        ${managed.map((s) => html`<option key=${s.id} value=${s.id}>${s.name}</option>`)}</select></p>` : null}
    ${current ? html`<h2>${current.name}</h2><${Manage} key=${current.id} site=${current} />` : null}
    <${Redeem} onJoined=${load} />
  </section>`;
}
