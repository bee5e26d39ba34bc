// Small SVG charts of per-minute activity (GetActivity), drawn from nothing but DOM calls.
import { h, number, svg } from "./dom.js";

export const COUNTS = ["enqueued", "started", "succeeded", "failed", "dead", "cancelled"];
const ENDED = ["succeeded", "dead", "cancelled"]; // stacked bars: jobs that ended
const LINES = ["enqueued", "failed"]; // lines: jobs enqueued, attempts failed

// One slot per minute from activity.start to the minute of activity.at, summed over the
// functions that `keep` accepts (all when not given); minutes without activity are zeros.
export function perMinute(activity, keep) {
  const start = Date.parse(activity.start);
  const slots = Math.max(1, Math.floor((Date.parse(activity.at) - start) / 60000) + 1);
  const minutes = Array.from({ length: slots }, (_, i) => {
    const slot = { at: new Date(start + i * 60000) };
    for (const count of COUNTS) slot[count] = 0;
    return slot;
  });
  for (const fn of activity.functions) {
    if (keep && !keep(fn)) continue;
    for (const bucket of fn.buckets) {
      const slot = minutes[Math.round((Date.parse(bucket.minute) - start) / 60000)];
      if (!slot) continue;
      for (const count of COUNTS) slot[count] += bucket[count] || 0;
    }
  }
  return minutes;
}

function describe(slot) {
  const time = slot.at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return `${time}: ` + COUNTS.map((c) => `${slot[c]} ${c}`).join(", ");
}

// Jobs that ended per minute as stacked bars, with jobs enqueued and attempts failed as lines.
export function activityChart(minutes) {
  const width = 600, height = 140, gap = 1;
  const peak = Math.max(1, ...minutes.map((m) => Math.max(ENDED.reduce((sum, c) => sum + m[c], 0),
    ...LINES.map((c) => m[c]))));
  const barWidth = width / minutes.length;
  const y = (value) => height - (value / peak) * (height - 4);
  const bars = [];
  minutes.forEach((slot, i) => {
    let top = height;
    const x = i * barWidth;
    for (const count of ENDED) {
      if (!slot[count]) continue;
      const size = height - y(slot[count]);
      top -= size;
      bars.push(svg("rect", { class: `bar ${count}`, x: x + gap / 2, y: top, width: Math.max(barWidth - gap, 0.5), height: size }));
    }
    // An invisible column per minute carries its tooltip.
    bars.push(svg("rect", { class: "hover", x, y: 0, width: barWidth, height }, svg("title", {}, describe(slot))));
  });
  const lines = LINES.map((count) => svg("polyline", {
    class: `line ${count}`, "vector-effect": "non-scaling-stroke",
    points: minutes.map((m, i) => `${(i + 0.5) * barWidth},${y(m[count])}`).join(" "),
  }));
  const first = minutes[0].at, span = Math.round((minutes.length - 1));
  return h("figure", { class: "chart" },
    h("div", { class: "chart-peak" }, number(peak)),
    svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img",
      "aria-label": "activity per minute" },
    svg("line", { class: "axis", x1: 0, x2: width, y1: height - 0.5, y2: height - 0.5, "vector-effect": "non-scaling-stroke" }),
    bars, lines),
    h("figcaption", {},
      h("span", {}, first.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }), ` (${span} min ago)`),
      h("span", { class: "legend" },
        ENDED.map((c) => h("span", { class: `key ${c}` }, c)),
        LINES.map((c) => h("span", { class: `key line ${c}` }, c === "failed" ? "failed attempts" : c))),
      h("span", {}, "now")));
}

// A tiny bar chart of jobs ended per minute (failed attempts in the warning colour on top).
export function sparkline(minutes) {
  const width = 120, height = 24;
  const peak = Math.max(1, ...minutes.map((m) => m.succeeded + m.dead + m.cancelled + m.failed));
  const barWidth = width / minutes.length;
  const bars = [];
  minutes.forEach((slot, i) => {
    const ok = slot.succeeded + slot.cancelled, bad = slot.failed + slot.dead;
    if (!ok && !bad) return;
    const okHeight = (ok / peak) * height, badHeight = (bad / peak) * height;
    bars.push(svg("rect", { class: "bar succeeded", x: i * barWidth, y: height - okHeight, width: barWidth, height: okHeight }));
    if (bad) bars.push(svg("rect", { class: "bar failed", x: i * barWidth, y: height - okHeight - badHeight, width: barWidth, height: badHeight }));
  });
  return svg("svg", { class: "sparkline", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none",
    role: "img", "aria-label": "jobs ended per minute, last hour" },
  svg("title", {}, `last hour: ${minutes.reduce((s, m) => s + m.succeeded, 0)} succeeded, ${minutes.reduce((s, m) => s + m.failed, 0)} failed attempts`),
  bars);
}
