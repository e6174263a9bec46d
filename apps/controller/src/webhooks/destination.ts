import { lookup } from 'node:dns/promises';
import { SpecError } from '@longshot/planner';
import { parseIp, type AddressPolicy, type IpAddress, type SpecialKind } from './addresses';

/** The request field a webhook URL comes in. */
export const WEBHOOK_FIELD = 'webhook';
export const MAX_WEBHOOK_URL_LENGTH = 2048;

/**
 * The URL of a `webhook` field: absolute http(s), a host, no credentials, no fragment. Errors are
 * SpecErrors naming the field that never echo the URL (it may carry a token).
 */
export function parseWebhookUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new SpecError(WEBHOOK_FIELD, 'must be an absolute http:// or https:// URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new SpecError(WEBHOOK_FIELD, `scheme must be http or https, got ${url.protocol.slice(0, 16).replace(/:$/, '')}`);
  if (url.username !== '' || url.password !== '') throw new SpecError(WEBHOOK_FIELD, 'must not carry credentials (user:password@); put a token in the path or query, and check the signature');
  if (url.hash !== '') throw new SpecError(WEBHOOK_FIELD, 'must not have a #fragment');
  if (url.hostname === '') throw new SpecError(WEBHOOK_FIELD, 'must name a host');
  return url;
}

/** A destination refused by the address policy: `kind` says what the address is, never which. */
export class DestinationRefused extends Error {
  constructor(readonly kind: SpecialKind) {
    super(`the webhook host resolves to a ${kind} address; such destinations are refused unless the operator allows them (LONGSHOT_WEBHOOK_ALLOW_CIDRS)`);
  }
}

/** The host did not resolve (at submit: a 400; at delivery: a failed attempt, retried). */
export class DestinationUnresolved extends Error {}

export interface ResolvedAddress {
  readonly address: string;
  readonly family: 4 | 6;
}

/** Resolves a host name to every address it has (the OS resolver, as connecting would). */
export type Resolver = (host: string) => Promise<ResolvedAddress[]>;

export const systemResolver: Resolver = async (host) => (await lookup(host, { all: true, verbatim: true })).map((a) => ({ address: a.address, family: a.family === 6 ? 6 : 4 }));

/**
 * Where a webhook may connect: the URL's host resolved (or its IP literal), every address vetted
 * by the policy. One refused address refuses the host: a name that also points inside the network
 * is not a public destination. Run at submit and again before each attempt, whose connection goes
 * to an address vetted here (so a name re-bound to a private address after submit is refused).
 */
export class DestinationGuard {
  constructor(
    private readonly policy: AddressPolicy,
    /** A resolver that hangs must not hold a submit or an attempt longer than this. */
    private readonly resolveTimeoutMs: number,
    private readonly resolve: Resolver = systemResolver,
  ) {}

  async vet(url: URL): Promise<ResolvedAddress[]> {
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    const literal = parseIp(host);
    let addresses: ResolvedAddress[];
    if (literal) addresses = [{ address: host, family: literal.version }];
    else {
      let timer: NodeJS.Timeout | undefined;
      try {
        const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('timeout')), this.resolveTimeoutMs)));
        addresses = await Promise.race([this.resolve(host), late]);
      } catch {
        throw new DestinationUnresolved(`the webhook host does not resolve (within ${this.resolveTimeoutMs} ms)`);
      } finally {
        clearTimeout(timer);
      }
      if (addresses.length === 0) throw new DestinationUnresolved('the webhook host does not resolve');
    }
    for (const a of addresses) {
      const ip: IpAddress | null = parseIp(a.address);
      const kind = ip ? this.policy.refusal(ip) : 'reserved';
      if (kind) throw new DestinationRefused(kind);
    }
    return addresses;
  }
}
