// The management API as the page uses it. The token lives in sessionStorage (this tab, until it
// closes) and travels only in the Authorization header, never in a URL.
const TOKEN = "lepton.token";
const ACTOR = "lepton.actor";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export const session = {
  token: () => sessionStorage.getItem(TOKEN),
  actor: () => sessionStorage.getItem(ACTOR) || "",
  signIn(token, actor) {
    sessionStorage.setItem(TOKEN, token);
    if (actor) sessionStorage.setItem(ACTOR, actor);
    else sessionStorage.removeItem(ACTOR);
  },
  signOut() {
    sessionStorage.removeItem(TOKEN);
  },
};

const listeners = new Set();
// Called with no argument when the server refuses the token (it changed, or was wrong).
export function onRefused(f) {
  listeners.add(f);
  return () => listeners.delete(f);
}

export async function api(method, path, body, token = session.token()) {
  const headers = { Authorization: `Bearer ${token}` };
  const actor = session.actor();
  if (actor) headers["X-Lepton-Actor"] = actor;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (e) {
    throw new ApiError(0, `the server cannot be reached (${e.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error) || text || response.statusText;
    if (response.status === 401 && token === session.token()) listeners.forEach((f) => f());
    throw new ApiError(response.status, message);
  }
  return data;
}

const enc = encodeURIComponent;
export const paths = {
  served: () => "/v2/lepton/models",
  stats: (m) => `/v2/lepton/models/${enc(m)}/stats`,
  policy: (m) => `/v2/lepton/models/${enc(m)}/policy`,
  events: (since, model) =>
    `/v2/lepton/events?since=${since}&limit=500${model ? `&model=${enc(model)}` : ""}`,
  models: () => "/v2/lepton/registry/models",
  versions: (m) => `/v2/lepton/registry/models/${enc(m)}/versions`,
  history: (m, limit = 500) => `/v2/lepton/registry/models/${enc(m)}/history?limit=${limit}`,
  alias: (m, a) => `/v2/lepton/models/${enc(m)}/aliases/${enc(a)}`,
  rollback: (m) => `/v2/lepton/models/${enc(m)}/rollback`,
};
