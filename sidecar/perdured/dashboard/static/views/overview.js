// Overview: jobs in progress and recent activity per function, and the last hour in charts.
import { get } from "../api.js";
import { activityChart, perMinute, sparkline } from "../charts.js";
import { fill, h, number, percent, seconds, table, throttle } from "../dom.js";
import { link } from "../nav.js";

const ACTIVITY_EVERY = 10000; // ms between reads of the per-minute activity (sidecars add it every 5 s)

export default {
  name: "overview",
  title: "Overview",
  mount({ root, namespace, stats }) {
    const tiles = h("section", { class: "tiles" });
    const chart = h("section", { class: "card" }, h("h2", {}, "Last hour"), h("p", { class: "muted" }, "Loading…"));
    const functions = h("section", { class: "card" }, h("h2", {}, "Functions"));
    root.append(h("h1", {}, "Overview"), tiles, chart, functions);
    let activity = null, latest = stats();

    function draw() {
      if (!latest) return;
      const fns = latest.functions;
      const sum = (key) => fns.reduce((total, f) => total + f[key], 0);
      const window = latest.window / 60;
      const ended = sum("succeeded_recently") + sum("dead_recently") + sum("cancelled_recently");
      const attempts = sum("succeeded_recently") + sum("failed_recently");
      fill(tiles,
        tile("Pending", number(sum("pending")), "waiting to run", "pending"),
        tile("Running", number(sum("running")), "on a worker now", "running"),
        tile("Suspended", number(sum("suspended")), "sleeping or awaiting", "suspended"),
        tile("Dead", number(sum("dead")), "dead letters kept", "dead", link("/dead", {}, "see them")),
        tile("Throughput", `${number((ended / latest.window) * 60, 1)}/min`, `jobs ended, last ${number(window)} min`),
        tile("Failure rate", percent(attempts ? sum("failed_recently") / attempts : 0), `of attempts, last ${number(window)} min`,
          sum("failed_recently") ? "failed" : ""),
      );
      const minutesOf = (f) => activity ? perMinute(activity, (a) => a.name === f.name) : null;
      const rows = fns.map((f) => {
        const minutes = minutesOf(f);
        return h("tr", { dataset: { function: f.name } },
          h("td", {}, link("/jobs", { name: f.name }, f.name)),
          h("td", { class: "num" }, number(f.pending)),
          h("td", { class: "num" }, number(f.running)),
          h("td", { class: "num" }, number(f.suspended)),
          h("td", { class: "num" }, f.dead ? link("/dead", { name: f.name }, number(f.dead)) : "0"),
          h("td", { class: "num" }, number(f.enqueued_recently)),
          h("td", { class: "num" }, number(f.succeeded_recently)),
          h("td", { class: "num" }, number(f.failed_recently)),
          h("td", { class: "num" }, `${number(f.throughput * 60, 1)}/min`),
          h("td", { class: "num" }, percent(f.failure_rate)),
          h("td", { class: "num" }, f.oldest_pending_age !== undefined ? seconds(f.oldest_pending_age) : "–"),
          h("td", {}, minutes ? sparkline(minutes) : null));
      });
      fill(functions, h("h2", {}, "Functions"),
        h("p", { class: "muted" }, `Now, and over the last ${number(window)} minutes; the bars show the last hour.`),
        table(["Function", "Pending", "Running", "Suspended", "Dead", "Enqueued", "Succeeded", "Failed attempts",
          "Throughput", "Failure rate", "Oldest waiting", "Last hour"], rows,
        "No jobs yet in this namespace: enqueue one and it shows up here."));
    }

    function drawChart() {
      if (!activity) return;
      fill(chart, h("h2", {}, "Last hour"), activityChart(perMinute(activity)));
    }

    const readActivity = throttle(async () => {
      try {
        activity = await get("/api/activity", { namespace, window: 3600 });
        drawChart();
        draw();
      } catch (err) {
        fill(chart, h("h2", {}, "Last hour"), h("p", { class: "error" }, err.message));
      }
    }, 5000);
    const readStats = async () => {
      try {
        latest = await get("/api/stats", { namespace });
        draw();
      } catch (err) {
        fill(tiles, h("p", { class: "error" }, err.message));
      }
    };
    const timer = setInterval(readActivity, ACTIVITY_EVERY);
    readStats();
    readActivity();
    draw();
    return {
      refresh() { readStats(); readActivity(); },
      onStats(value) { latest = value; draw(); readActivity(); },
      unmount() { clearInterval(timer); readActivity.cancel(); },
    };
  },
};

function tile(title, value, note, tone = "", extra = null) {
  return h("div", { class: `tile ${tone}`, dataset: { tile: title.toLowerCase().replace(" ", "-") } },
    h("div", { class: "tile-title" }, title),
    h("div", { class: "tile-value" }, value),
    h("div", { class: "tile-note" }, note, extra ? " · " : "", extra));
}
