/** HTTP helpers of the end-to-end suites: requests against a real controller, and polling. */

export interface HttpResult {
  readonly status: number;
  readonly headers: Headers;
  readonly text: string;
  /** The body parsed as JSON, or its text when it is not JSON. */
  readonly json: any;
}

export interface HttpInit {
  /** Sent as JSON (content-type application/json). */
  readonly body?: unknown;
  /** Sent as is (a string or bytes), e.g. a malformed body or an upload. */
  readonly raw?: Buffer | string;
  readonly headers?: Record<string, string>;
}

/** `route` is a path under `base`, or an absolute URL. */
export async function request(base: string, method: string, route: string, init: HttpInit = {}): Promise<HttpResult> {
  const json = init.body !== undefined;
  const res = await fetch(route.startsWith('http') ? route : `${base}${route}`, {
    method,
    headers: { ...(json ? { 'content-type': 'application/json' } : {}), ...init.headers },
    body: json ? JSON.stringify(init.body) : init.raw,
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, headers: res.headers, text, json: parsed };
}

/** Polls `fn` every 100 ms until it returns something truthy; fails after `timeoutMs`. */
export async function waitFor<T>(what: string, fn: () => Promise<T | null | undefined | false>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
