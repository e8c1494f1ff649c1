// The console's only way to the server: the public REST API, with tokens kept and refreshed here.
// The refresh token is stored (rotated or not, whatever came back last); the access token lives in memory.
const BASE = "/api/v1";
const KEY = "pumplink.session";

export const session = { access: null, refresh: null, user: null, expiresAt: 0 };
const listeners = new Set();
let refreshTimer = null;
let refreshing = null;

export function onSession(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}
function changed(reason) {
  for (const fn of listeners) fn(session, reason);
}

export function restore() {
  try {
    const saved = JSON.parse(localStorage.getItem(KEY) || "null");
    if (saved && saved.refresh) Object.assign(session, { refresh: saved.refresh, user: saved.user });
  } catch {
    localStorage.removeItem(KEY);
  }
  return !!session.refresh;
}

function keep(tokens) {
  session.access = tokens.access_token;
  if (tokens.refresh_token) session.refresh = tokens.refresh_token;
  if (tokens.user) session.user = tokens.user;
  const ttl = Math.max(5, Number(tokens.expires_in) || 900);
  session.expiresAt = Date.now() + ttl * 1000;
  localStorage.setItem(KEY, JSON.stringify({ refresh: session.refresh, user: session.user }));
  // Refresh ahead of expiry, so the live feed can re-authenticate before the server closes it.
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refresh().catch(() => {}), ttl * 800);
  changed("tokens");
}

export function forget(reason) {
  clearTimeout(refreshTimer);
  Object.assign(session, { access: null, refresh: null, user: null, expiresAt: 0 });
  localStorage.removeItem(KEY);
  changed(reason || "signed-out");
}

export class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super(describe(status, body, retryAfter));
    this.status = status;
    this.code = body && body.code;
    this.body = body;
  }
}

function wait(seconds) {
  const s = Math.ceil(seconds);
  if (s < 60) return `${s} second${s === 1 ? "" : "s"}`;
  const m = Math.ceil(s / 60);
  if (m < 120) return `${m} minute${m === 1 ? "" : "s"}`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

// Every answer the server can give, in words a person can act on (the server's own sentence first).
export function describe(status, body, retryAfter) {
  const said = body && typeof body.error === "string" ? body.error : "";
  switch (status) {
    case 0: return "The server cannot be reached. Check the network; the console keeps trying.";
    case 400: return `The request was not understood: ${said || "check the values."}`;
    case 401: return said ? `Please sign in again: ${said}` : "Please sign in again.";
    case 403: return `Not allowed: ${said || "your account may not do this."}`;
    case 404: return `Not found: ${said || "it may have been deleted."}`;
    case 409: return `Not now: ${said || "it conflicts with what the pump is doing."}`;
    case 413: return "That is too large for the server.";
    case 422: return `Check the values: ${said || "one is out of range."}`;
    case 429: return `${said || "Too many requests."}${retryAfter ? ` Try again in ${wait(retryAfter)}.` : ""}`;
    case 503: return `The server cannot do this right now (a part of it is down): ${said || "try again shortly."}`;
    default: return said || `The server answered ${status}.`;
  }
}

async function send(method, path, body, token) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (token) headers.Authorization = `Bearer ${token}`;
  let resp;
  try {
    const url = path.startsWith("/api/") || path === "/ready" || path === "/metrics" ? path : BASE + path;
    resp = await fetch(url, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store",
    });
  } catch {
    throw new ApiError(0, null);
  }
  const text = await resp.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = text; }
  }
  if (!resp.ok) throw new ApiError(resp.status, data, Number(resp.headers.get("Retry-After")) || null);
  return data;
}

function stored() {
  try { return JSON.parse(localStorage.getItem(KEY) || "null") || {}; } catch { return {}; }
}

// Tabs of one browser share the stored refresh token. With rotation a token works once, so
// refreshes are taken in turn (a Web Lock, where the page is a secure context) and each starts
// from the token stored last, which another tab may have rotated meanwhile.
function inTurn(fn) {
  return navigator.locks ? navigator.locks.request("pumplink-refresh", fn) : fn();
}

export function refresh() {
  if (!refreshing) {
    refreshing = inTurn(async () => {
      const latest = stored().refresh;
      if (latest) session.refresh = latest;
      if (!session.refresh) throw new ApiError(401, { error: "Your session has ended." });
      try {
        keep(await send("POST", "/refresh-token", { refresh_token: session.refresh }));
      } catch (err) {
        if (err.status === 401 || err.status === 403) forget(err.message);
        throw err;
      }
    }).finally(() => { refreshing = null; });
  }
  return refreshing;
}

// Signed out in another tab: this one follows.
addEventListener("storage", (ev) => {
  if (ev.key === KEY && ev.newValue === null && session.refresh) forget("You signed out in another tab.");
});

export async function call(method, path, body) {
  if (!session.access) await refresh();
  try {
    return await send(method, path, body, session.access);
  } catch (err) {
    if (err.status !== 401) throw err;
    await refresh();  // an expired access token: once more with a fresh one
    return send(method, path, body, session.access);
  }
}
export const get = (path) => call("GET", path);
export const post = (path, body = {}) => call("POST", path, body);
export const patch = (path, body) => call("PATCH", path, body);
export const del = (path) => call("DELETE", path);

// The next page's address: a cursor (`next`) when the server gives one, else `next_offset`.
export function nextPage(path, page) {
  const sep = path.includes("?") ? "&" : "?";
  if (page.next) return `${path}${sep}cursor=${encodeURIComponent(page.next)}`;
  if (page.next_offset != null) return `${path}${sep}offset=${page.next_offset}`;
  return null;
}

// Every item of a paged list (bounded by `cap`).
export async function all(path, key = "items", cap = 20000) {
  const out = [];
  let url = path;
  while (url && out.length < cap) {
    const page = await get(url);
    out.push(...(page[key] || []));
    url = nextPage(path, page);
  }
  return out;
}

export async function signIn(email, password) {
  keep(await send("POST", "/login", { email, password }));
}
export async function register(email, password) {
  return send("POST", "/register", { email, password });
}
export async function signOut() {
  const refreshToken = session.refresh;
  forget("signed-out");
  if (refreshToken) {
    try { await send("POST", "/logout", { refresh_token: refreshToken }); } catch { /* already ended */ }
  }
}
export async function plain(path) {
  return send("GET", path);
}
