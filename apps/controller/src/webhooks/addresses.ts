import { isIP } from 'node:net';

/**
 * IP addresses and CIDR ranges as numbers, and the table of ranges a webhook must not reach
 * unless the operator allows them: the guard against server-side request forgery.
 */

export interface IpAddress {
  readonly version: 4 | 6;
  readonly value: bigint;
}

export interface Cidr extends IpAddress {
  readonly prefix: number;
}

/** Why an address is not a public destination. */
export type SpecialKind = 'unspecified' | 'loopback' | 'private' | 'shared' | 'link-local' | 'multicast' | 'reserved';

const BITS = { 4: 32, 6: 128 } as const;

/** The address of `text` (IPv4 dotted quad or IPv6, with or without brackets), or null. */
export function parseIp(text: string): IpAddress | null {
  const t = text.startsWith('[') && text.endsWith(']') ? text.slice(1, -1) : text;
  const version = isIP(t);
  if (version === 4) return { version: 4, value: ipv4Value(t) };
  if (version !== 6 || t.includes('%')) return null;
  // An embedded dotted quad (::ffff:1.2.3.4) is the last two groups.
  const lastColon = t.lastIndexOf(':');
  const quad = t.slice(lastColon + 1);
  let hex = t;
  if (quad.includes('.')) {
    const v4 = ipv4Value(quad);
    hex = `${t.slice(0, lastColon + 1)}${(v4 >> 16n).toString(16)}:${(v4 & 0xffffn).toString(16)}`;
  }
  const [left, right] = hex.includes('::') ? hex.split('::') : [hex, null];
  const groups = (s: string): bigint[] => (s === '' ? [] : s.split(':').map((g) => BigInt(`0x${g}`)));
  const l = groups(left);
  const r = right === null ? [] : groups(right);
  const all = [...l, ...Array<bigint>(right === null ? 0 : 8 - l.length - r.length).fill(0n), ...r];
  if (all.length !== 8) return null;
  return { version: 6, value: all.reduce((acc, g) => (acc << 16n) | g, 0n) };
}

function ipv4Value(t: string): bigint {
  return t.split('.').reduce((acc, o) => (acc << 8n) | BigInt(Number(o)), 0n);
}

/** `a.b.c.d/n` or `x::/n`; a bare address is its /32 or /128. Throws on anything else. */
export function parseCidr(text: string): Cidr {
  const [addr, bits, extra] = text.trim().split('/');
  const ip = parseIp(addr);
  const max = ip ? BITS[ip.version] : 0;
  const prefix = bits === undefined ? max : /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
  if (!ip || extra !== undefined || !(prefix >= 0 && prefix <= max)) throw new Error(`${JSON.stringify(text)} is not a CIDR range (e.g. 10.0.0.0/8, fd00::/8)`);
  return { ...ip, prefix };
}

export function inCidr(range: Cidr, ip: IpAddress): boolean {
  if (range.version !== ip.version) return false;
  const shift = BigInt(BITS[ip.version] - range.prefix);
  return ip.value >> shift === range.value >> shift;
}

/** IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64): judged as that address. */
const EMBEDDING_IPV4 = ['::ffff:0:0/96', '::/96', '64:ff9b::/96'].map(parseCidr);

/** The IPv4 address an IPv6 address stands for, or the address itself. */
export function unwrapIpv4(ip: IpAddress): IpAddress {
  if (ip.version === 6 && ip.value > 1n && EMBEDDING_IPV4.some((r) => inCidr(r, ip))) return { version: 4, value: ip.value & 0xffffffffn };
  return ip;
}

/** The ranges that are not public destinations, most specific first where they nest. */
export const SPECIAL_RANGES: readonly (readonly [string, SpecialKind])[] = [
  ['0.0.0.0/8', 'unspecified'],
  ['10.0.0.0/8', 'private'],
  ['100.64.0.0/10', 'shared'], // carrier-grade NAT
  ['127.0.0.0/8', 'loopback'],
  ['169.254.0.0/16', 'link-local'], // cloud metadata services live here
  ['172.16.0.0/12', 'private'],
  ['192.0.0.0/24', 'reserved'],
  ['192.168.0.0/16', 'private'],
  ['198.18.0.0/15', 'reserved'],
  ['224.0.0.0/4', 'multicast'],
  ['240.0.0.0/4', 'reserved'], // and the broadcast address
  ['::/128', 'unspecified'],
  ['::1/128', 'loopback'],
  ['fc00::/7', 'private'], // unique local
  ['fec0::/10', 'private'], // site-local (deprecated)
  ['fe80::/10', 'link-local'],
  ['ff00::/8', 'multicast'],
];

const SPECIAL = SPECIAL_RANGES.map(([cidr, kind]) => [parseCidr(cidr), kind] as const);

/** What kind of special address `ip` is (IPv4 in IPv6 judged as the IPv4), or null when public. */
export function specialKind(ip: IpAddress): SpecialKind | null {
  const judged = unwrapIpv4(ip);
  return SPECIAL.find(([range]) => inCidr(range, judged))?.[1] ?? null;
}

/** Which destinations webhooks may reach: every public address, plus the operator's allowed ranges. */
export class AddressPolicy {
  private readonly allowed: readonly Cidr[];

  constructor(allowCidrs: readonly string[]) {
    this.allowed = allowCidrs.map(parseCidr);
  }

  /** Why `ip` is refused, or null when a webhook may connect to it. */
  refusal(ip: IpAddress): SpecialKind | null {
    const kind = specialKind(ip);
    if (kind === null) return null;
    const judged = unwrapIpv4(ip);
    return this.allowed.some((r) => inCidr(r, ip) || inCidr(r, judged)) ? null : kind;
  }
}
