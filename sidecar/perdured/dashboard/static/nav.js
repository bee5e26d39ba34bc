// Moving between the views of the page (history API), and short notes to the user.
import { h } from "./dom.js";

let render = () => {};

export function onNavigate(fn) {
  render = fn;
}

export function namespace() {
  return new URLSearchParams(location.search).get("ns") || "default";
}

// A URL of this page, keeping the namespace.
export function href(path, query = {}) {
  const params = new URLSearchParams();
  if (namespace() !== "default") params.set("ns", namespace());
  for (const [key, value] of Object.entries(query)) {
    if (value === undefined || value === null || value === "") continue;
    for (const item of Array.isArray(value) ? value : [value]) params.append(key, item);
  }
  const search = params.toString();
  return path + (search ? `?${search}` : "");
}

export function navigate(url, { replace = false } = {}) {
  if (url === location.pathname + location.search) return;
  history[replace ? "replaceState" : "pushState"](null, "", url);
  render();
}

// A link to a view of this page (opened in place, or in a new tab with a modifier key).
export function link(path, query, ...children) {
  const url = href(path, query);
  return h("a", {
    href: url,
    onclick: (event) => {
      if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
      event.preventDefault();
      navigate(url);
    },
  }, children);
}

export function toast(message, kind = "info") {
  const note = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  document.getElementById("toasts").append(note);
  setTimeout(() => note.remove(), kind === "error" ? 8000 : 4000);
}

