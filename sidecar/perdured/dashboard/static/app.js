// The dashboard's page: a router over six views, a live connection (server-sent events) that
// tells the current view what changed, and the header around them. When the sidecar has tokens,
// a login form first (the token stays on the server; the browser keeps a session cookie).
import { get, onUnauthorized, post } from "./api.js";
import { h, tick } from "./dom.js";
import { href, link, namespace, navigate, onNavigate, toast } from "./nav.js";
import overview from "./views/overview.js";
import jobs from "./views/jobs.js";
import job from "./views/job.js";
import dead from "./views/dead.js";
import schedules from "./views/schedules.js";
import workers from "./views/workers.js";

const ROUTES = [
  [/^\/$/, overview],
  [/^\/jobs$/, jobs],
  [/^\/jobs\/([^/]+)$/, job],
  [/^\/dead$/, dead],
  [/^\/schedules$/, schedules],
  [/^\/workers$/, workers],
];
const NAV = [["/", "Overview"], ["/jobs", "Jobs"], ["/dead", "Dead letters"], ["/schedules", "Schedules"], ["/workers", "Workers"]];
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const main = document.querySelector("main");
const status = document.getElementById("live");
const namespaceSelect = document.getElementById("namespace");
let current = null; // the mounted view's controller
let events = null; // the EventSource of the current namespace
let stats = null; // the latest statistics of the namespace
let loggedOut = false; // the login form is showing

function render() {
  const path = location.pathname;
  const query = new URLSearchParams(location.search);
  let view = null, params = [];
  for (const [pattern, candidate] of ROUTES) {
    const match = pattern.exec(path);
    if (match) { view = candidate; params = match.slice(1).map(decodeURIComponent); break; }
  }
  current?.unmount?.();
  current = null;
  for (const a of document.querySelectorAll("nav a")) {
    const target = a.dataset.path;
    a.classList.toggle("active", target === "/" ? path === "/" : path.startsWith(target));
  }
  const root = h("div", { class: "view" });
  main.replaceChildren(root);
  if (!view) {
    root.append(h("h1", {}, "Not found"), h("p", {}, "No such page. ", link("/", {}, "Back to the overview.")));
    return;
  }
  document.title = `${view.title} · Perdure`;
  document.documentElement.dataset.view = view.name;
  connect();
  current = view.mount({ root, params, query, namespace: namespace(), stats: () => stats });
  if (stats) current.onStats?.(stats);
}

// -- live updates ----------------------------------------------------------------------------

function setLive(state, text) {
  status.className = `live ${state}`;
  status.textContent = text;
  document.documentElement.dataset.live = String(state === "on");
}

function connect() {
  const url = `/api/events?namespace=${encodeURIComponent(namespace())}`;
  if (events && events.url.endsWith(url)) return;
  events?.close();
  stats = null;
  setLive("off", "connecting…");
  events = new EventSource(url);
  events.addEventListener("ready", () => {
    setLive("on", "live");
    current?.refresh?.(); // every change after this read comes as an event
  });
  events.addEventListener("down", () => setLive("off", "reconnecting…"));
  events.addEventListener("jobs", (message) => current?.onJobs?.(JSON.parse(message.data)));
  events.addEventListener("stats", (message) => {
    stats = JSON.parse(message.data);
    current?.onStats?.(stats);
  });
  events.addEventListener("error", () => {
    setLive("off", "reconnecting…");
    // A refused stream (401: the login expired) is not retried by the browser: ask why.
    if (events?.readyState === EventSource.CLOSED) checkSession();
  });
}

// -- logging in ----------------------------------------------------------------------------------

async function checkSession() {
  try {
    const session = await get("/api/session");
    if (session.required && !session.authenticated) showLogin();
  } catch {
    // unreachable: the live dot says so already
  }
}

function showLogin(message) {
  if (loggedOut) return;
  loggedOut = true;
  events?.close();
  events = null;
  current?.unmount?.();
  current = null;
  setLive("off", "logged out");
  document.title = "Log in · Perdure";
  document.documentElement.dataset.view = "login";
  const input = h("input", {
    type: "password", name: "token", autocomplete: "current-password", required: true, spellcheck: "false",
    "aria-label": "token", placeholder: "token",
  });
  const note = h("p", { class: "error", role: "alert" }, message && !/^log in/i.test(message) ? message : "");
  const button = h("button", { type: "submit" }, "Log in");
  const form = h("form", {
    class: "card login",
    onsubmit: async (event) => {
      event.preventDefault();
      button.disabled = true;
      try {
        await post("/api/login", {}, { token: input.value });
        location.reload();
      } catch (err) {
        note.textContent = err.message;
        input.select();
        button.disabled = false;
      }
    },
  }, h("h1", {}, "Log in"),
  h("p", { class: "muted" }, "This sidecar asks for a token: one of those it was given (--token or --tokens-file). " +
    "It stays on the server; this browser keeps a session, for 12 hours at most."),
  input, button, note);
  main.replaceChildren(h("div", { class: "view" }, form));
  input.focus();
}

function addLogout() {
  const button = h("button", {
    class: "secondary small", id: "logout", type: "button",
    onclick: async () => {
      try {
        await post("/api/logout");
      } finally {
        location.reload();
      }
    },
  }, "Log out");
  document.querySelector(".tools").append(button);
}

// -- the header --------------------------------------------------------------------------------

function header() {
  const nav = document.querySelector("nav");
  nav.replaceChildren(...NAV.map(([path, text]) => {
    const a = link(path, {}, text);
    a.dataset.path = path;
    return a;
  }));
  const search = document.getElementById("search");
  search.addEventListener("submit", (event) => {
    event.preventDefault();
    const input = search.querySelector("input");
    const id = input.value.trim();
    if (!UUID.test(id)) {
      toast(`"${id}" is not a job id (a UUID such as 0192c3e4-5f6a-7b8c-9d0e-1f2a3b4c5d6e).`, "error");
      return;
    }
    input.value = "";
    navigate(href(`/jobs/${id.toLowerCase()}`));
  });
  namespaceSelect.addEventListener("change", () => {
    const params = new URLSearchParams();
    if (namespaceSelect.value !== "default") params.set("ns", namespaceSelect.value);
    navigate(location.pathname + (params.size ? `?${params}` : ""));
  });
}

async function loadNamespaces() {
  try {
    const [info, known] = await Promise.all([get("/api/info"), get("/api/namespaces")]);
    const names = new Set([...known.namespaces, namespace()]);
    namespaceSelect.replaceChildren(...[...names].sort().map((name) => h("option", { value: name }, name)));
    namespaceSelect.value = namespace();
    document.getElementById("version").textContent = `perdured ${info.version}`;
  } catch {
    namespaceSelect.replaceChildren(h("option", { value: namespace() }, namespace()));
  }
}

async function start() {
  header();
  onUnauthorized((message) => showLogin(message));
  let session = { required: false, authenticated: true, namespaces: null };
  try {
    session = await get("/api/session");
  } catch {
    // the views say that the dashboard cannot be reached
  }
  if (session.required && !session.authenticated) {
    showLogin();
    return;
  }
  if (session.required) addLogout();
  const allowed = session.namespaces;
  if (allowed && allowed.length && !allowed.includes(namespace())) {
    // A token for some namespaces only: start in one of them.
    const params = new URLSearchParams(location.search);
    if (allowed[0] === "default") params.delete("ns");
    else params.set("ns", allowed[0]);
    history.replaceState(null, "", location.pathname + (params.size ? `?${params}` : ""));
  }
  onNavigate(() => loggedOut || render());
  window.addEventListener("popstate", () => loggedOut || render());
  render();
  loadNamespaces();
  setInterval(() => tick(main), 1000);
}

start();
