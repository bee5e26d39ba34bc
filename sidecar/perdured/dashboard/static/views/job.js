// One job: what it is, its attempts on a timeline, steps, children, progress, logs, payload,
// result or error; Cancel and Retry. Live: read again whenever it or a child changes.
import { get, post } from "../api.js";
import { TERMINAL, badge, between, bytes, fill, h, labels, number, payloadText, seconds, table, throttle, when } from "../dom.js";
import { href, link, toast } from "../nav.js";

export default {
  name: "job",
  title: "Job",
  mount({ root, params, namespace }) {
    const [id] = params;
    let job = null;
    root.append(h("p", { class: "muted" }, "Loading…"));

    const refresh = throttle(async () => {
      try {
        job = (await get(`/api/jobs/${encodeURIComponent(id)}`, { namespace })).job;
        draw();
      } catch (err) {
        fill(root, h("h1", {}, "Job ", h("span", { class: "mono" }, id)),
          h("p", { class: "error" }, err.status === 404 ? `No job ${id} in namespace ${namespace}.` : err.message));
      }
    }, 300);

    async function act(action) {
      const buttons = root.querySelectorAll("button[data-action]");
      buttons.forEach((b) => { b.disabled = true; });
      try {
        const answer = await post(`/api/jobs/${encodeURIComponent(id)}/${action}`, { namespace });
        if (action === "cancel") toast(answer.cancelled ? "Cancelled." : "It had finished already: nothing changed.");
        else toast("Sent back to pending, with a fresh set of attempts.");
      } catch (err) {
        toast(err.message, "error");
      }
      refresh();
    }

    function draw() {
      document.title = `${job.name} · Perdure`;
      const canCancel = !TERMINAL.has(job.state), canRetry = job.state === "dead" || job.state === "cancelled";
      fill(root,
        h("div", { class: "title" },
          h("h1", {}, job.name, " ", badge(job.state)),
          h("div", { class: "actions" },
            h("button", { class: "danger", dataset: { action: "cancel" }, disabled: !canCancel,
              title: canCancel ? "Cancel the job (and its unfinished children)" : "Only an unfinished job can be cancelled",
              onclick: () => { if (confirm(`Cancel job ${job.id}?`)) act("cancel"); } }, "Cancel"),
            h("button", { dataset: { action: "retry" }, disabled: !canRetry,
              title: canRetry ? "Run it again, with a fresh set of attempts" : "Only a dead or cancelled job can be retried",
              onclick: () => act("retry") }, "Retry"))),
        h("p", { class: "mono muted" }, job.id),
        progress(job),
        facts(job),
        timeline(job),
        job.error ? errorCard(job.error, job.state === "dead" ? "Error" : "Last error") : null,
        job.result ? payloadCard("Result", job.result, `/api/jobs/${job.id}/result`, namespace) : null,
        steps(job),
        children(job),
        logs(job),
        payloadCard("Payload", job.payload, `/api/jobs/${job.id}/payload`, namespace));
    }

    refresh();
    // While it runs, the durations grow: redraw what shows them every second.
    const timer = setInterval(() => {
      if (!job || TERMINAL.has(job.state)) return;
      root.querySelector("[data-section=facts]")?.replaceWith(facts(job));
      root.querySelector("[data-section=timeline]")?.replaceWith(timeline(job));
    }, 1000);
    return {
      refresh,
      onJobs(events) {
        const children = new Set((job?.children || []).map((c) => c.id));
        if (events.some((e) => e.job_id === id || children.has(e.job_id))) refresh();
      },
      unmount() { refresh.cancel(); clearInterval(timer); },
    };
  },
};

function progress(job) {
  const p = job.progress;
  if (!p || (!p.total && !p.current && !p.message)) return null;
  const ratio = p.total ? Math.min(1, Math.max(0, p.current / p.total)) : null;
  const bar = h("div", { class: "progress-bar" + (ratio === null ? " indeterminate" : "") });
  if (ratio !== null) bar.style.width = `${(ratio * 100).toFixed(1)}%`;
  return h("section", { class: "card", dataset: { section: "progress" } },
    h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": p.total || undefined,
      "aria-valuenow": p.current }, bar),
    h("p", {}, p.total ? `${number(p.current, 2)} of ${number(p.total, 2)} (${Math.round(ratio * 100)} %)` : number(p.current, 2),
      p.message ? ` — ${p.message}` : "", p.at ? [" · ", when(p.at)] : null));
}

function facts(job) {
  const r = job.retry || {};
  const rows = [
    ["Namespace", job.namespace],
    ["Attempts", `${job.attempt} of ${r.max_attempts}`],
    ["Created", when(job.created_at)],
    [job.state === "pending" ? "Runs" : "Run at", when(job.run_at)],
    ["Started", when(job.started_at)],
    ["Finished", when(job.finished_at)],
    ["Ran for", job.started_at ? between(job.started_at, job.finished_at) : "–"],
    ["Timeout", `${seconds(job.timeout)} per attempt`],
    ["Retries", `${r.backoff} backoff from ${seconds(r.initial_delay)} to ${seconds(r.max_delay)}, jitter ${r.jitter}`],
    ["Priority", String(job.priority)],
    job.labels && Object.keys(job.labels).length ? ["Labels", labels(job.labels)] : null,
    job.idempotency_key ? ["Idempotency key", h("span", { class: "mono" }, job.idempotency_key)] : null,
    job.concurrency_key ? ["Concurrency key", h("span", { class: "mono" }, job.concurrency_key)] : null,
    job.parent_id ? ["Parent", link(`/jobs/${job.parent_id}`, {}, h("span", { class: "mono" }, job.parent_id))] : null,
    job.waiting_for ? ["Waiting for", waitingFor(job.waiting_for)] : null,
    job.start_by ? ["Start by", when(job.start_by)] : null,
    job.max_duration !== undefined ? ["Max duration", seconds(job.max_duration)] : null,
    job.deadline ? ["Deadline", when(job.deadline)] : null,
  ].filter(Boolean);
  return h("section", { class: "card", dataset: { section: "facts" } }, h("dl", { class: "facts" },
    rows.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)])));
}

function waitingFor(value) {
  if (value.startsWith("job:")) {
    const child = value.slice(4);
    return ["child job ", link(`/jobs/${child}`, {}, h("span", { class: "mono" }, child))];
  }
  return value.startsWith("event:") ? `event "${value.slice(6)}"` : value;
}

// The attempts on one time axis, from the job's creation to its end (or now).
function timeline(job) {
  const attempts = job.attempts || [];
  const start = Date.parse(job.created_at);
  const end = Math.max(job.finished_at ? Date.parse(job.finished_at) : Date.now(),
    ...attempts.map((a) => (a.ended_at ? Date.parse(a.ended_at) : Date.now())), start + 1);
  const span = end - start;
  const rows = attempts.map((a) => {
    const from = Date.parse(a.started_at), to = a.ended_at ? Date.parse(a.ended_at) : Date.now();
    const bar = h("div", { class: `span ${a.outcome}`, title: `${a.outcome}, ${seconds((to - from) / 1000)}` });
    bar.style.left = `${((from - start) / span) * 100}%`;
    bar.style.width = `${Math.max(((to - from) / span) * 100, 0.4)}%`;
    return h("div", { class: "attempt", dataset: { attempt: a.number, outcome: a.outcome } },
      h("div", { class: "attempt-head" },
        h("strong", {}, `#${a.number}`), " ", badge(a.outcome), " ",
        h("span", { class: "muted" }, seconds((to - from) / 1000), " · started ", when(a.started_at),
          a.worker_id ? ` · worker ${a.worker_id}` : "")),
      h("div", { class: "track" }, bar),
      a.error ? h("div", { class: "attempt-error" }, h("strong", {}, a.error.type), ": ", a.error.message) : null);
  });
  return h("section", { class: "card", dataset: { section: "timeline" } },
    h("h2", {}, "Attempts"),
    rows.length ? [h("div", { class: "time-axis" }, h("span", {}, "created ", when(job.created_at)),
      h("span", {}, job.finished_at ? ["finished ", when(job.finished_at)] : "now")), rows]
      : h("p", { class: "muted" }, job.state === "pending" ? ["Not started yet; it may run ", when(job.run_at), "."] : "No attempts."));
}

function errorCard(error, title) {
  return h("section", { class: "card error-card", dataset: { section: "error" } },
    h("h2", {}, title),
    h("p", {}, h("strong", { class: "error-type" }, error.type), error.non_retryable ? " (non-retryable)" : "", ": ", error.message),
    error.traceback ? h("pre", { class: "traceback" }, error.traceback) : null);
}

function payloadCard(title, payload, path, namespace) {
  if (!payload) return null;
  return h("section", { class: "card", dataset: { section: title.toLowerCase() } },
    h("h2", {}, title, " ", h("span", { class: "muted small" }, `${payload.encoding}, ${bytes(payload.size)}`),
      " ", h("a", { class: "small", href: href(path, { namespace }), download: "" }, "download")),
    payload.truncated ? h("p", { class: "muted" }, "Only the beginning is shown: download it for the whole of it.") : null,
    h("pre", { class: "payload" }, payloadText(payload)));
}

function steps(job) {
  if (!job.steps?.length) return null;
  const rows = job.steps.map((s) => h("tr", {},
    h("td", { class: "mono" }, s.name),
    h("td", {}, badge(s.status)),
    h("td", { class: "num" }, String(s.attempt)),
    h("td", {}, when(s.recorded_at)),
    h("td", {}, s.error ? [h("strong", {}, s.error.type), ": ", s.error.message]
      : s.result ? h("code", { class: "clip", title: payloadText(s.result) }, payloadText(s.result)) : "")));
  return h("section", { class: "card", dataset: { section: "steps" } }, h("h2", {}, "Steps"),
    table(["Step", "Status", "Attempt", "Recorded", "Result or error"], rows));
}

function children(job) {
  if (!job.children?.length) return null;
  const rows = job.children.map((c) => h("tr", { dataset: { jobId: c.id } },
    h("td", { class: "mono" }, link(`/jobs/${c.id}`, {}, c.id)),
    h("td", {}, c.name),
    h("td", {}, badge(c.state)),
    h("td", {}, when(c.created_at))));
  return h("section", { class: "card", dataset: { section: "children" } }, h("h2", {}, "Children"),
    table(["Id", "Function", "State", "Created"], rows));
}

function logs(job) {
  if (!job.logs?.length) return null;
  return h("section", { class: "card", dataset: { section: "logs" } }, h("h2", {}, "Logs"),
    h("ol", { class: "logs" }, job.logs.map((line) => h("li", { class: `log ${line.level}` },
      h("span", { class: "muted" }, when(line.at), ` #${line.attempt}`), " ",
      h("span", { class: `level ${line.level}` }, line.level), " ",
      h("span", { class: "message" }, line.message)))));
}
