// Dead letters: dead jobs by function and error, retried one by one or all that match at once.
import { get, post } from "../api.js";
import { fill, h, number, shortId, table, throttle, when } from "../dom.js";
import { href, link, navigate, toast } from "../nav.js";

const PAGE_SIZE = 100;

export default {
  name: "dead",
  title: "Dead letters",
  mount({ root, query, namespace, stats }) {
    const filter = {
      name: query.get("name") || "",
      error_type: query.get("error_type") || "",
      error_contains: query.get("error_contains") || "",
    };
    const byFunction = h("div", { class: "chips" });
    const form = h("form", { class: "filters", onsubmit: (event) => { event.preventDefault(); apply(); } },
      h("label", {}, "Function", h("input", { name: "name", value: filter.name, placeholder: "any" })),
      h("label", {}, "Error type", h("input", { name: "error_type", value: filter.error_type, placeholder: "e.g. ValueError" })),
      h("label", {}, "Message contains", h("input", { name: "error_contains", value: filter.error_contains })),
      h("button", { type: "submit" }, "Filter"),
      h("button", { type: "button", class: "secondary", onclick: () => navigate(href("/dead")) }, "Clear"));
    const retryAll = h("button", { dataset: { action: "retry-all" }, onclick: retryMatching }, "Retry all matching");
    const results = h("section", { class: "card" }, h("p", { class: "muted" }, "Loading…"));
    root.append(
      h("div", { class: "title" }, h("h1", {}, "Dead letters"), h("div", { class: "actions" }, retryAll)),
      h("p", { class: "muted" }, "Jobs that used up their attempts or raised a non-retryable error. Retrying one gives it a fresh set of attempts."),
      h("section", { class: "card" }, h("h2", {}, "By function"), byFunction),
      form, results);

    function apply() {
      const data = Object.fromEntries(new FormData(form));
      navigate(href("/dead", { name: data.name.trim(), error_type: data.error_type.trim(), error_contains: data.error_contains }));
    }

    function drawFunctions(value) {
      if (!value) return;
      const dead = value.functions.filter((f) => f.dead > 0).sort((a, b) => b.dead - a.dead);
      fill(byFunction, ...(dead.length ? dead.map((f) => link("/dead", { name: f.name },
        h("span", { class: "chip" + (f.name === filter.name ? " selected" : "") }, `${f.name}: ${number(f.dead)}`)))
        : [h("span", { class: "muted" }, "No dead jobs in this namespace.")]));
    }

    async function retryOne(job, button) {
      button.disabled = true;
      try {
        await post(`/api/jobs/${job.id}/retry`, { namespace });
        toast(`Job ${shortId(job.id)} sent back to pending.`);
      } catch (err) {
        toast(err.message, "error");
        button.disabled = false;
      }
      refresh();
    }

    async function retryMatching() {
      const what = [filter.name && `of ${filter.name}`, filter.error_type && `with ${filter.error_type}`,
        filter.error_contains && `whose message contains "${filter.error_contains}"`].filter(Boolean).join(" ");
      if (!confirm(`Retry every dead job ${what || "in this namespace"}?`)) return;
      retryAll.disabled = true;
      try {
        const answer = await post("/api/jobs/retry", {}, { namespace, states: ["dead"], ...filter });
        toast(`${number(answer.retried)} job${answer.retried === 1 ? "" : "s"} sent back to pending.`);
      } catch (err) {
        toast(err.message, "error");
      }
      retryAll.disabled = false;
      refresh();
    }

    const refresh = throttle(async () => {
      try {
        const page = await get("/api/jobs", { namespace, state: "dead", page_size: PAGE_SIZE, ...filter });
        draw(page);
      } catch (err) {
        fill(results, h("p", { class: "error" }, err.message));
      }
    }, 1000);

    function draw(page) {
      const types = new Map();
      for (const job of page.jobs) {
        const type = job.error?.type || "(no error)";
        types.set(type, (types.get(type) || 0) + 1);
      }
      const rows = page.jobs.map((job) => {
        const button = h("button", { class: "small", dataset: { action: "retry" }, onclick: () => retryOne(job, button) }, "Retry");
        return h("tr", { dataset: { jobId: job.id } },
          h("td", { class: "mono small" }, link(`/jobs/${job.id}`, {}, job.id)),
          h("td", {}, job.name),
          h("td", {}, job.error ? link("/dead", { ...filter, error_type: job.error.type }, job.error.type) : "–"),
          h("td", { class: "message" }, job.error?.message || ""),
          h("td", { class: "num" }, String(job.attempt)),
          h("td", {}, when(job.finished_at)),
          h("td", {}, button));
      });
      retryAll.disabled = page.jobs.length === 0;
      fill(results,
        types.size ? h("p", { class: "chips" }, h("span", { class: "muted" }, page.next_page_token ? `Error types among the newest ${PAGE_SIZE}:` : "Error types:"),
          [...types].map(([type, count]) => link("/dead", { ...filter, error_type: type === "(no error)" ? "" : type },
            h("span", { class: "chip" }, `${type}: ${count}`)))) : null,
        table(["Id", "Function", "Error type", "Message", "Attempts", "Died", ""], rows, "No dead jobs match."),
        page.next_page_token ? h("p", { class: "muted" }, `Showing the newest ${PAGE_SIZE}; "Retry all matching" retries them all.`) : null);
    }

    drawFunctions(stats());
    refresh();
    return {
      refresh,
      onJobs(events) {
        if (events.some((e) => e.kind === "dead" || e.kind === "retried" || e.state === "dead")) refresh();
      },
      onStats: drawFunctions,
      unmount: refresh.cancel,
    };
  },
};
