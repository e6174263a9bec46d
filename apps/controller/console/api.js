// The console's client of the controller's API (docs/api.md): same origin, JSON, the one error shape.

/** A 4xx/5xx answer: `{error, message, field?}`. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error ?? 'http_error';
    this.field = body?.field ?? null;
  }
}

/** `method path`, with a JSON body and extra headers; resolves to the parsed body (null if none). */
export async function api(method, path, { body, headers = {} } = {}) {
  const json = body !== undefined;
  const res = await fetch(path, {
    method,
    headers: { accept: 'application/json', ...(json ? { 'content-type': 'application/json' } : {}), ...headers },
    body: json ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = { error: 'http_error', message: text.slice(0, 200) };
  }
  if (!res.ok) throw new ApiError(res.status, parsed);
  return parsed;
}

/**
 * What POST /v1/videos takes, from the served OpenAPI document: the body's JSON schema (the
 * controller's field table, request.ts) and the operation's header parameters.
 */
export async function submitOperation() {
  const doc = await api('GET', '/docs-json');
  const op = doc.paths['/v1/videos'].post;
  return {
    body: op.requestBody.content['application/json'].schema,
    headers: (op.parameters ?? []).filter((p) => p.in === 'header'),
  };
}

export const TERMINAL = ['succeeded', 'failed', 'canceled'];

/**
 * Trades an API key for the session cookie (POST /v1/session): HttpOnly, so this page never
 * holds the key after this call, and EventSource and <video src> send the cookie by themselves.
 */
export function signIn(key) {
  return api('POST', '/v1/session', { headers: { authorization: `Bearer ${key}` } });
}

/** Ends the session (DELETE /v1/session expires the cookie); the next call answers 401. */
export function signOut() {
  return api('DELETE', '/v1/session');
}

/** Who the page is signed in as: `{tenant, role, keyId}` (GET /v1/session); 401 when no one. */
export function whoAmI() {
  return api('GET', '/v1/session');
}
