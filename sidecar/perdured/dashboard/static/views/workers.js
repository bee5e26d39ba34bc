// Workers: every process connected to any sidecar sharing the database, and this sidecar.
import { get } from "../api.js";
import { fill, h, number, seconds, table, throttle, when } from "../dom.js";

const EVERY = 5000; // ms between reads (sidecars refresh their workers' entries with every lease renewal)

export default {
  name: "workers",
  title: "Workers",
  mount({ root, namespace }) {
    const results = h("section", { class: "card" }, h("p", { class: "muted" }, "Loading…"));
    const sidecar = h("section", { class: "card" });
    root.append(h("h1", {}, "Workers"), results, sidecar);

    const refresh = throttle(async () => {
      try {
        const [workers, info] = await Promise.all([get("/api/workers", { namespace }), get("/api/info")]);
        draw(workers.workers);
        drawSidecar(info);
      } catch (err) {
        fill(results, h("p", { class: "error" }, err.message));
      }
    }, 1000);

    function draw(workers) {
      const rows = workers.map((w) => {
        const load = h("div", { class: "load-bar" });
        load.style.width = `${w.concurrency ? Math.min(100, (w.in_flight / w.concurrency) * 100) : 0}%`;
        return h("tr", { dataset: { worker: w.id } },
          h("td", {}, h("strong", {}, w.worker_name), w.draining ? [" ", h("span", { class: "badge draining" }, "draining")] : null,
            h("div", { class: "muted small mono" }, w.id)),
          h("td", {}, w.sdk),
          h("td", {}, h("span", { class: "chips" }, w.names.map((n) => h("span", { class: "chip" }, n)))),
          h("td", { class: "num" }, h("div", {}, `${w.in_flight} / ${w.concurrency}`), h("div", { class: "load" }, load)),
          h("td", {}, when(w.connected_at)),
          h("td", {}, when(w.last_seen)),
          h("td", { class: "mono small" }, w.sidecar_id));
      });
      fill(results, h("h2", {}, `Connected to any sidecar (${workers.length})`),
        table(["Worker", "SDK", "Functions", "In flight", "Connected", "Last seen", "Sidecar"], rows,
          "No workers are connected in this namespace."));
    }

    function drawSidecar(info) {
      const facts = [
        ["Version", info.version],
        ["Sidecar", h("span", { class: "mono" }, info.sidecar_id)],
        ["Started", when(info.started_at)],
        ["Schema", `${info.schema_version} (newest known: ${info.latest_schema_version})`],
        ["PostgreSQL", `${info.database_version}${info.embedded_database ? " (embedded)" : ""}, round trip ${seconds(info.database_latency)}`],
        ["Workers here", `${number(info.workers)}, holding ${number(info.in_flight)} jobs`],
        ["Lease", seconds(info.lease)],
      ];
      fill(sidecar, h("h2", {}, "This sidecar"),
        h("dl", { class: "facts" }, facts.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)])));
    }

    refresh();
    const timer = setInterval(refresh, EVERY);
    return {
      refresh,
      onJobs(events) { if (events.some((e) => e.kind === "started" || e.kind === "succeeded")) refresh(); },
      unmount() { clearInterval(timer); refresh.cancel(); },
    };
  },
};
