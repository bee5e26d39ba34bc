// Building the page. Everything shown comes from h(): strings become text nodes, never HTML,
// so payloads, errors and names cannot inject markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

// Replaces el's children (null, undefined and false are left out, as in h()).
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") Object.assign(el.style, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// -- values ---------------------------------------------------------------------------------

export const TERMINAL = new Set(["success", "dead", "cancelled"]);

export function badge(state) {
  return h("span", { class: `badge ${state}`, dataset: { state } }, state.replace("_", " "));
}

// The end of a job id: its random part (the beginning is a timestamp, alike for jobs of the same minute).
export function shortId(id) {
  return id ? "…" + id.slice(-12) : "";
}

export function number(value, digits = 0) {
  if (value === undefined || value === null || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits });
}

export function percent(ratio) {
  return ratio ? `${(ratio * 100).toFixed(ratio < 0.1 ? 1 : 0)} %` : "0 %";
}

export function seconds(value) {
  if (value === undefined || value === null) return "–";
  const s = Math.abs(value);
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const [big, bigUnit, small, smallUnit] = s < 3600 ? [Math.floor(s / 60), "min", Math.round(s % 60), "s"]
    : s < 86400 ? [Math.floor(s / 3600), "h", Math.round((s % 3600) / 60), "min"]
      : [Math.floor(s / 86400), "d", Math.round((s % 86400) / 3600), "h"];
  return small ? `${big} ${bigUnit} ${small} ${smallUnit}` : `${big} ${bigUnit}`;
}

function relative(at) {
  const delta = (Date.parse(at) - Date.now()) / 1000;
  if (Math.abs(delta) < 1) return "now";
  const text = seconds(Math.abs(delta)).replace(/ (\d+) (s|min|h)$/, ""); // the larger unit is enough
  return delta < 0 ? `${text} ago` : `in ${text}`;
}

// A time shown relative to now ("12 s ago"), kept up to date by tick(); the title says when.
export function when(at) {
  if (!at) return h("span", { class: "muted" }, "–");
  return h("time", { datetime: at, title: new Date(at).toLocaleString() }, relative(at));
}

export function tick(root = document) {
  for (const el of root.querySelectorAll("time[datetime]")) el.textContent = relative(el.getAttribute("datetime"));
}

export function between(start, end) {
  if (!start) return "–";
  return seconds((Date.parse(end || new Date().toISOString()) - Date.parse(start)) / 1000);
}

// A payload as text for a <pre>: JSON indented when it parses, else as it came.
export function payloadText(payload) {
  if (!payload) return "";
  if (payload.text !== undefined) {
    if (payload.encoding === "json" && !payload.truncated) {
      try { return JSON.stringify(JSON.parse(payload.text), null, 2); } catch { /* shown as it is */ }
    }
    return payload.text;
  }
  return payload.base64 || "";
}

export function bytes(size) {
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KiB`;
  return `${(size / 1024 / 1024).toFixed(1)} MiB`;
}

export function labels(map) {
  const entries = Object.entries(map || {});
  if (!entries.length) return null;
  return h("span", { class: "chips" }, entries.map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`)));
}

export function table(headers, rows, empty = "Nothing here.") {
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((text) => h("th", {}, text)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "empty" }, empty))));
}

// Calls fn at once, then at most once per `ms` while calls keep coming (the last one is never
// lost), and never two at a time: a call during a run waits for it.
export function throttle(fn, ms) {
  let last = 0, timer = null, running = false, again = false;
  const run = async () => {
    timer = null;
    if (running) { again = true; return; }
    running = true;
    last = Date.now();
    try { await fn(); } finally {
      running = false;
      if (again) { again = false; schedule(); }
    }
  };
  const schedule = () => {
    if (timer) return;
    timer = setTimeout(run, Math.max(0, last + ms - Date.now()));
  };
  const call = () => schedule();
  call.cancel = () => { clearTimeout(timer); timer = null; again = false; };
  return call;
}
