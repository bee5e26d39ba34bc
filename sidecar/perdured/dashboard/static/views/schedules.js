// Schedules: every cron schedule of the namespace, its next and last runs; pause and resume.
import { get, post } from "../api.js";
import { fill, h, labels, table, throttle, when } from "../dom.js";
import { link, toast } from "../nav.js";

const EVERY = 10000; // ms between reads

export default {
  name: "schedules",
  title: "Schedules",
  mount({ root, namespace }) {
    const results = h("section", { class: "card" }, h("p", { class: "muted" }, "Loading…"));
    root.append(h("h1", {}, "Schedules"),
      h("p", { class: "muted" }, "Each tick of a schedule enqueues one job, labelled schedule=<name>."), results);

    async function toggle(schedule, button) {
      const action = schedule.paused ? "resume" : "pause";
      button.disabled = true;
      try {
        await post(`/api/schedules/${action}`, {}, { namespace, name: schedule.name });
        toast(`${schedule.name} ${action === "pause" ? "paused" : "resumed"}.`);
      } catch (err) {
        toast(err.message, "error");
      }
      refresh();
    }

    const refresh = throttle(async () => {
      try {
        const page = await get("/api/schedules", { namespace });
        draw(page.schedules, Boolean(page.next_page_token));
      } catch (err) {
        fill(results, h("p", { class: "error" }, err.message));
      }
    }, 500);

    function draw(schedules, more) {
      const rows = schedules.map((s) => {
        const button = h("button", { class: "small secondary", dataset: { action: s.paused ? "resume" : "pause" },
          onclick: () => toggle(s, button) }, s.paused ? "Resume" : "Pause");
        return h("tr", { dataset: { schedule: s.name } },
          h("td", {}, h("strong", {}, s.name), labels(s.job?.labels)),
          h("td", {}, link("/jobs", { name: s.job?.name, label: `schedule=${s.name}` }, s.job?.name)),
          h("td", { class: "mono" }, s.cron),
          h("td", {}, s.timezone),
          h("td", {}, s.paused ? h("span", { class: "badge paused" }, "paused") : when(s.next_run_at)),
          h("td", {}, s.last_run_at ? [when(s.last_run_at), " ", s.last_job_id ? link(`/jobs/${s.last_job_id}`, {}, "job") : null] : "never"),
          h("td", {}, s.missed),
          h("td", { class: "message" }, s.last_error ? h("span", { class: "error" }, s.last_error) : ""),
          h("td", {}, button));
      });
      fill(results, table(["Schedule", "Function", "Cron", "Time zone", "Next run", "Last run", "Missed ticks",
        "Last error", ""], rows, "No schedules in this namespace."),
      more ? h("p", { class: "muted" }, `The first ${schedules.length} schedules, by name.`) : null);
    }

    refresh();
    const timer = setInterval(refresh, EVERY);
    return {
      refresh,
      onJobs(events) { if (events.some((e) => e.kind === "enqueued")) refresh(); },
      unmount() { clearInterval(timer); refresh.cancel(); },
    };
  },
};
