// Jobs: newest first, filtered by function, state and labels, in pages; live.
import { get } from "../api.js";
import { badge, between, fill, h, labels, table, throttle, when } from "../dom.js";
import { href, link, navigate } from "../nav.js";

export const STATES = ["pending", "running", "suspended", "success", "dead", "cancelled"];

export default {
  name: "jobs",
  title: "Jobs",
  mount({ root, query, namespace, stats }) {
    const filter = {
      name: query.get("name") || "",
      state: query.getAll("state"),
      label: query.getAll("label"),
      page_token: query.get("page_token") || "",
    };
    const names = h("datalist", { id: "function-names" });
    const form = h("form", { class: "filters", onsubmit: (event) => { event.preventDefault(); apply(); } },
      h("label", {}, "Function", h("input", { name: "name", list: "function-names", value: filter.name, placeholder: "any" })),
      h("label", {}, "State", h("select", { name: "state" },
        h("option", { value: "" }, "any"),
        STATES.map((s) => h("option", { value: s, selected: filter.state.length === 1 && filter.state[0] === s }, s)))),
      h("label", {}, "Labels", h("input", { name: "label", value: filter.label.join(", "), placeholder: "key=value, …" })),
      h("button", { type: "submit" }, "Filter"),
      h("a", { href: href("/jobs"), class: "button secondary", onclick: (e) => { e.preventDefault(); navigate(href("/jobs")); } }, "Clear"),
      names);
    const results = h("section", { class: "card" }, h("p", { class: "muted" }, "Loading…"));
    root.append(h("h1", {}, "Jobs"), form, results);

    function apply() {
      const data = new FormData(form);
      const label = String(data.get("label") || "").split(",").map((s) => s.trim()).filter(Boolean);
      navigate(href("/jobs", { name: String(data.get("name") || "").trim(), state: data.get("state"), label }));
    }

    function fillNames(value) {
      if (!value) return;
      fill(names, ...value.functions.map((f) => h("option", { value: f.name })));
    }

    const refresh = throttle(async () => {
      try {
        const page = await get("/api/jobs", { namespace, ...filter });
        draw(page);
      } catch (err) {
        fill(results, h("p", { class: "error" }, err.message));
      }
    }, 500);

    function draw(page) {
      const rows = page.jobs.map((job) => h("tr", { dataset: { jobId: job.id } },
        h("td", { class: "mono small" }, link(`/jobs/${job.id}`, {}, job.id)),
        h("td", {}, job.name),
        h("td", {}, badge(job.state)),
        h("td", { class: "num" }, `${job.attempt}/${job.retry?.max_attempts ?? "?"}`),
        h("td", {}, when(job.created_at)),
        h("td", {}, job.started_at ? between(job.started_at, job.finished_at) : "–"),
        h("td", {}, job.finished_at ? when(job.finished_at) : job.state === "pending" ? waiting(job.run_at) : "–"),
        h("td", {}, job.error ? h("span", { class: "error-type", title: job.error.message }, job.error.type) : null,
          labels(job.labels))));
      const pager = h("div", { class: "pager" },
        filter.page_token ? h("button", { class: "secondary", onclick: () => history.back() }, "← Newer") : null,
        filter.page_token ? link("/jobs", { ...filter, page_token: "" }, "Newest") : null,
        page.next_page_token
          ? h("button", { class: "secondary", onclick: () => navigate(href("/jobs", { ...filter, page_token: page.next_page_token })) }, "Older →")
          : null);
      fill(results,
        table(["Id", "Function", "State", "Attempts", "Created", "Ran for", "Finished", "Error · labels"], rows,
          "No jobs match."),
        pager);
    }

    fillNames(stats());
    refresh();
    return {
      refresh,
      onJobs(events) {
        if (!filter.name || events.some((e) => e.name === filter.name)) refresh();
      },
      onStats: fillNames,
      unmount: refresh.cancel,
    };
  },
};

// A pending job: how long it has been runnable, or when it will be.
function waiting(runAt) {
  return Date.parse(runAt) <= Date.now() ? ["waiting since ", when(runAt)] : ["runs ", when(runAt)];
}
