// Shared view helpers: templates, times in the user's zone, durations in words.
import { h } from "../vendor/preact.js";
import htm from "../vendor/htm.js";

export const html = htm.bind(h);
export const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, {
  weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
});
const dayFmt = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });

export function when(iso) {
  return iso ? dateTimeFmt.format(new Date(iso)) : "—";
}
export function clock(iso) {
  return iso ? timeFmt.format(new Date(iso)) : "—";
}
export function day(date) {
  return dayFmt.format(date);
}

// "4 min 05 s", "12 s": what a person reads on a countdown or a run length.
export function seconds(total) {
  if (total == null) return "—";
  const s = Math.max(0, Math.round(total));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60), r = s % 60;
  if (m < 60) return r ? `${m} min ${String(r).padStart(2, "0")} s` : `${m} min`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}
export function minutes(value) {
  if (value == null) return "—";
  return `${Math.round(value * 10) / 10} min`;
}

// A datetime-local value (the user's wall time) as an ISO time with the user's offset.
export function localToIso(value) {
  return new Date(value).toISOString();
}
export function isoToLocalInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}
export function startOfDay(date) {
  const d = new Date(date);
  d.setHours(0, 0, 0, 0);
  return d;
}

export function Message({ error, ok }) {
  if (error) return html`<p class="msg error" role="alert">${error}</p>`;
  if (ok) return html`<p class="msg ok" role="status">${ok}</p>`;
  return null;
}
