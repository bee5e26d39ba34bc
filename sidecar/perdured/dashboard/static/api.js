// The dashboard's JSON API (app.py): every call is one RPC of the sidecar.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let unauthorized = () => {};

// Called with the server's message when a request needs a login (401): the session expired, or
// the sidecar restarted and forgot it.
export function onUnauthorized(fn) {
  unauthorized = fn;
}

async function call(method, path, params, body) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const item of Array.isArray(value) ? value : [value]) url.searchParams.append(key, item);
  }
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (method !== "GET") {
    init.headers["X-Perdure-Dashboard"] = "1"; // the server refuses actions without it
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body || {});
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, "the dashboard cannot be reached (is perdured running?)");
  }
  const data = await response.json().catch(() => ({}));
  if (response.status === 401 && path !== "/api/login") unauthorized(data.error);
  if (!response.ok) throw new ApiError(response.status, data.error || `${response.status} ${response.statusText}`);
  return data;
}

export const get = (path, params) => call("GET", path, params);
export const post = (path, params, body) => call("POST", path, params, body);
