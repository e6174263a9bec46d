import * as http from 'node:http';
import * as https from 'node:https';
import { isIP } from 'node:net';
import { DestinationRefused, DestinationUnresolved, type DestinationGuard, type ResolvedAddress } from './destination';

/** How one delivery attempt ended. */
export type AttemptResult =
  | { readonly kind: 'response'; readonly status: number }
  /** The destination was refused at delivery time (DNS now points somewhere forbidden). */
  | { readonly kind: 'refused'; readonly message: string }
  /** No response: DNS failure, connection refused, timeout, TLS error. */
  | { readonly kind: 'error'; readonly message: string };

/** Errors of connecting to one address, after which the next address of the host is tried. */
const CONNECT_ERRORS = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL']);
/** What is read of a receiver's answer (the status is all that counts). */
const MAX_RESPONSE_BYTES = 64 * 1024;

/**
 * The outbound HTTP adapter of webhooks: POSTs a body to a URL, connecting only to addresses the
 * guard vetted just now (the Host header and TLS SNI/certificate name stay the URL's host), with a
 * deadline per attempt, no redirects followed (a 3xx is a failed attempt) and no proxy.
 */
export class WebhookSender {
  constructor(private readonly guard: DestinationGuard) {}

  /** One attempt: the guard resolves (bounded by its own deadline), then the answer must come within `timeoutMs`. */
  async post(url: URL, body: string, headers: Record<string, string>, timeoutMs: number): Promise<AttemptResult> {
    let addresses: ResolvedAddress[];
    try {
      addresses = await this.guard.vet(url);
    } catch (e) {
      if (e instanceof DestinationRefused) return { kind: 'refused', message: e.message };
      if (e instanceof DestinationUnresolved) return { kind: 'error', message: e.message };
      throw e;
    }
    let last: AttemptResult = { kind: 'error', message: 'no address' };
    for (const address of addresses) {
      try {
        return { kind: 'response', status: await postTo(url, address, body, headers, timeoutMs) };
      } catch (e) {
        last = { kind: 'error', message: (e as Error).message };
        if (!CONNECT_ERRORS.has((e as NodeJS.ErrnoException).code ?? '')) break;
      }
    }
    return last;
  }
}

function postTo(url: URL, to: ResolvedAddress, body: string, headers: Record<string, string>, timeoutMs: number): Promise<number> {
  const secure = url.protocol === 'https:';
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  const options: https.RequestOptions = {
    method: 'POST',
    host: to.address,
    family: to.family,
    port: url.port || (secure ? 443 : 80),
    path: `${url.pathname}${url.search}`,
    headers: { ...headers, host: url.host, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'user-agent': 'Longshot-Webhooks/1' },
    agent: false,
    // SNI and the certificate check use the URL's name, not the address connected to.
    ...(secure && isIP(host) === 0 ? { servername: host } : {}),
  };
  return new Promise<number>((resolve, reject) => {
    const req = (secure ? https : http).request(options, (res) => {
      let read = 0;
      res.on('data', (chunk: Buffer) => {
        read += chunk.length;
        if (read > MAX_RESPONSE_BYTES) res.destroy();
      });
      res.on('close', () => resolve(res.statusCode ?? 0));
      res.on('error', () => resolve(res.statusCode ?? 0));
    });
    const deadline = setTimeout(() => req.destroy(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' })), timeoutMs);
    req.on('error', (e) => {
      clearTimeout(deadline);
      reject(e);
    });
    req.on('close', () => clearTimeout(deadline));
    req.end(body);
  });
}
