// The REST client: one function per call the page makes, all through request(), which
// turns every failure into an ApiError whose message is a sentence a person can read.

const BASE = "/api/v1";
let auth = { token: () => null, onExpired: () => {} };

export function configureApi(options) {
  auth = options;
}

export class ApiError extends Error {
  constructor(status, body) {
    super(describe(status, body));
    this.status = status;
    this.body = body;
    this.detail = typeof body?.detail === "string" ? body.detail : null;
  }
}

function describe(status, body) {
  if (status === 0) return "The server cannot be reached.";
  if (status === 404 && body?.detail === "Not Found" && !body?.message) {
    return "Not available on this server.";
  }
  if (Array.isArray(body?.detail)) {
    return body.detail
      .map((error) => `${error.loc?.filter((part) => part !== "body").join(".") || "request"}: ${error.msg}`)
      .join("; ");
  }
  const broker = body?.error?.message ?? body?.order?.error?.message;
  if (body?.message && broker && !body.message.includes(broker)) return `${body.message}: ${broker}`;
  if (body?.message) return body.message;
  if (broker) return broker;
  return `The server answered ${status}${body?.detail ? ` (${body.detail})` : ""}.`;
}

export async function request(method, path, { body, query, token } = {}) {
  const url = new URL(BASE + path, location.origin);
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value !== undefined && value !== null) url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json" };
  const bearer = token ?? auth.token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, null);
  }
  const text = await response.text();
  let parsed = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
  }
  if (response.ok) return { status: response.status, body: parsed };
  if (response.status === 401 && parsed?.detail === "invalid_token") auth.onExpired();
  throw new ApiError(response.status, parsed);
}

export const get = (path, query) => request("GET", path, { query });

export const login = (email, password) => request("POST", "/auth/login", { body: { email, password }, token: "" });
export const register = (email, password) =>
  request("POST", "/auth/register", { body: { email, password }, token: "" });
export const me = () => get("/me");

export const listConnections = () => get("/broker-connections");
export const createConnection = (fields) => request("POST", "/broker-connections", { body: fields });
export const provisionAgent = (id) => request("POST", `/broker-connections/${encodeURIComponent(id)}/agent`);
export const completeOnboarding = () =>
  request("POST", "/onboarding/complete", { body: { accept_risk_disclosure: true } });

export const placeOrder = (order) => request("POST", "/orders", { body: order });
export const getOrder = (id) => get(`/orders/${encodeURIComponent(id)}`);
export const listOrders = () => get("/orders", { limit: 100 });
export const listPositions = () => get("/positions");
export const closePosition = (id, volume) =>
  request("DELETE", `/positions/${encodeURIComponent(id)}`, { query: { volume } });
export const modifyPosition = (id, changes) =>
  request("PATCH", `/positions/${encodeURIComponent(id)}`, { body: changes });
export const getAccount = () => get("/account");
export const getCandles = (instrument, timeframe, count) =>
  get(`/candles/${encodeURIComponent(instrument)}`, { timeframe, count });

// The routes below came after the first release: callers check state.config.features.
export const listPendingOrders = () => get("/pending-orders");
export const modifyPendingOrder = (ticket, changes) =>
  request("PATCH", `/pending-orders/${encodeURIComponent(ticket)}`, { body: changes });
export const cancelPendingOrder = (ticket) => request("DELETE", `/pending-orders/${encodeURIComponent(ticket)}`);
export const listDeals = () => get("/history/deals", { limit: 200 });
export const listSymbols = () => get("/symbols");
export const getJob = (id) => get(`/jobs/${encodeURIComponent(id)}`);
export const listApiKeys = () => get("/api-keys");
export const createApiKey = (fields) => request("POST", "/api-keys", { body: fields });
export const revokeApiKey = (id) => request("DELETE", `/api-keys/${encodeURIComponent(id)}`);
