import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SpecError } from '@longshot/planner';
import { AddressPolicy, parseCidr, parseIp, specialKind } from '../src/webhooks/addresses';
import { DestinationGuard, DestinationRefused, DestinationUnresolved, type Resolver } from '../src/webhooks/destination';
import { retryDelayMs } from '../src/webhooks/dispatcher';
import { WebhookSender } from '../src/webhooks/sender';
import type { ControllerConfig } from '../src/config';
import { parseWebhookSecretQuery } from '../src/request';
import { verifyWebhookSignature, webhookSignature, webhookSignatures } from '../src/webhooks/signing';
import { deriveTenantSecret, signingSecretsOf, tenantSecret, TenantSecretService } from '../src/webhooks/tenant-secrets';
import { WebhookService } from '../src/webhooks/webhook.service';

const kind = (ip: string) => {
  const parsed = parseIp(ip);
  if (!parsed) throw new Error(`${ip} did not parse`);
  return specialKind(parsed);
};

describe('webhook address classifier', () => {
  it('parses IPv4, IPv6 (compressed, full, embedded dotted quad, bracketed) and refuses the rest', () => {
    expect(parseIp('10.1.2.3')).toEqual({ version: 4, value: 0x0a010203n });
    expect(parseIp('::')).toEqual({ version: 6, value: 0n });
    expect(parseIp('::1')).toEqual({ version: 6, value: 1n });
    expect(parseIp('[fe80::1]')).toEqual({ version: 6, value: (0xfe80n << 112n) | 1n });
    expect(parseIp('2001:db8:0:0:0:0:0:1')).toEqual(parseIp('2001:db8::1'));
    expect(parseIp('::ffff:127.0.0.1')).toEqual(parseIp('::ffff:7f00:1'));
    expect(parseIp('64:ff9b::10.0.0.1')).toEqual(parseIp('64:ff9b::a00:1'));
    for (const bad of ['example.com', '1.2.3', '256.1.1.1', '::1::', 'fe80::1%eth0', '']) expect(parseIp(bad), bad).toBeNull();
  });

  it('classifies IPv4 loopback, private, CGNAT, link-local, unspecified, multicast and reserved; public is null', () => {
    const cases: [string, string | null][] = [
      ['127.0.0.1', 'loopback'],
      ['127.255.255.254', 'loopback'],
      ['10.0.0.1', 'private'],
      ['172.16.0.1', 'private'],
      ['172.31.255.255', 'private'],
      ['172.32.0.1', null],
      ['192.168.1.1', 'private'],
      ['100.64.0.1', 'shared'],
      ['100.127.255.255', 'shared'],
      ['100.128.0.1', null],
      ['169.254.169.254', 'link-local'],
      ['0.0.0.0', 'unspecified'],
      ['224.0.0.251', 'multicast'],
      ['255.255.255.255', 'reserved'],
      ['8.8.8.8', null],
      ['93.184.216.34', null],
      ['11.0.0.1', null],
    ];
    for (const [ip, want] of cases) expect(kind(ip), ip).toBe(want);
  });

  it('classifies IPv6 and the IPv6 forms of IPv4 addresses (mapped, compatible, NAT64) as the IPv4', () => {
    const cases: [string, string | null][] = [
      ['::1', 'loopback'],
      ['::', 'unspecified'],
      ['fc00::1', 'private'],
      ['fd12:3456::1', 'private'],
      ['fe80::1', 'link-local'],
      ['febf::1', 'link-local'],
      ['fec0::1', 'private'],
      ['ff02::1', 'multicast'],
      ['2001:db8::1', null],
      ['2606:4700::1111', null],
      ['::ffff:127.0.0.1', 'loopback'],
      ['::ffff:7f00:1', 'loopback'],
      ['::ffff:169.254.169.254', 'link-local'],
      ['::ffff:10.0.0.1', 'private'],
      ['::ffff:8.8.8.8', null],
      ['::127.0.0.1', 'loopback'],
      ['64:ff9b::192.168.0.1', 'private'],
      ['64:ff9b::8.8.8.8', null],
    ];
    for (const [ip, want] of cases) expect(kind(ip), ip).toBe(want);
  });

  it('lets the operator allow ranges (IPv4 ranges cover their IPv6 forms); everything else special stays refused', () => {
    const none = new AddressPolicy([]);
    expect(none.refusal(parseIp('127.0.0.1')!)).toBe('loopback');
    expect(none.refusal(parseIp('8.8.8.8')!)).toBeNull();
    const loopback = new AddressPolicy(['127.0.0.0/8']);
    expect(loopback.refusal(parseIp('127.0.0.1')!)).toBeNull();
    expect(loopback.refusal(parseIp('::ffff:127.0.0.1')!)).toBeNull();
    expect(loopback.refusal(parseIp('::1')!)).toBe('loopback');
    expect(loopback.refusal(parseIp('10.0.0.1')!)).toBe('private');
    const one = new AddressPolicy(['10.1.2.3', 'fd00::/8']);
    expect(one.refusal(parseIp('10.1.2.3')!)).toBeNull();
    expect(one.refusal(parseIp('10.1.2.4')!)).toBe('private');
    expect(one.refusal(parseIp('fd00::5')!)).toBeNull();
    expect(one.refusal(parseIp('fc00::5')!)).toBe('private');
  });

  it('refuses malformed CIDRs', () => {
    expect(parseCidr('10.0.0.0/8')).toMatchObject({ version: 4, prefix: 8 });
    expect(parseCidr('::/0')).toMatchObject({ version: 6, prefix: 0 });
    for (const bad of ['10.0.0.0/33', '::/129', '10.0.0.0/-1', '10.0.0.0/8/8', 'example.com/8', '10.0.0.0/x', '']) expect(() => parseCidr(bad), bad).toThrow(/not a CIDR/);
  });
});

describe('webhook destination guard', () => {
  const resolver = (table: Record<string, string[]>): Resolver => async (host) => {
    const found = table[host];
    if (!found) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
    return found.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
  };
  const dns = resolver({ 'public.test': ['93.184.216.34', '2606:2800::1'], 'inside.test': ['10.0.0.7'], 'split.test': ['93.184.216.34', '127.0.0.1'], 'meta.test': ['169.254.169.254'] });

  it('returns every address of a public host, refuses a host with any special address, and says what kind, never which', async () => {
    const guard = new DestinationGuard(new AddressPolicy([]), 5000, dns);
    expect(await guard.vet(new URL('https://public.test/x'))).toEqual([
      { address: '93.184.216.34', family: 4 },
      { address: '2606:2800::1', family: 6 },
    ]);
    for (const [url, why] of [
      ['https://inside.test/', 'private'],
      ['https://split.test/', 'loopback'],
      ['http://meta.test/latest/meta-data', 'link-local'],
      ['http://127.0.0.1:8080/', 'loopback'],
      ['http://[::1]/', 'loopback'],
      ['http://[::ffff:127.0.0.1]/', 'loopback'],
      ['http://[fe80::1]/', 'link-local'],
      ['http://0.0.0.0/', 'unspecified'],
      // Obfuscated forms the URL parser normalises to dotted quads.
      ['http://2130706433/', 'loopback'],
      ['http://0x7f.1/', 'loopback'],
      ['http://0177.0.0.1/', 'loopback'],
      ['http://[0:0:0:0:0:ffff:7f00:1]/', 'loopback'],
    ] as const) {
      const e = await guard.vet(new URL(url)).catch((x: unknown) => x);
      expect(e, url).toBeInstanceOf(DestinationRefused);
      expect((e as DestinationRefused).kind, url).toBe(why);
      expect((e as Error).message).not.toMatch(/\d+\.\d+\.\d+\.\d+|::/);
    }
    await expect(guard.vet(new URL('https://nowhere.test/'))).rejects.toBeInstanceOf(DestinationUnresolved);
  });

  it('connects to allowed ranges when the operator allows them', async () => {
    const guard = new DestinationGuard(new AddressPolicy(['127.0.0.0/8', '10.0.0.0/8']), 5000, dns);
    expect(await guard.vet(new URL('https://inside.test/'))).toEqual([{ address: '10.0.0.7', family: 4 }]);
    expect(await guard.vet(new URL('http://127.0.0.1:9/'))).toEqual([{ address: '127.0.0.1', family: 4 }]);
    await expect(guard.vet(new URL('http://meta.test/'))).rejects.toBeInstanceOf(DestinationRefused);
  });
});

describe('webhook signatures', () => {
  const secret = 'whsec-0123456789abcdef';
  const body = '{"id":"j:1-0","type":"succeeded"}';

  it('signs "<id>.<timestamp>.<body>" with HMAC-SHA256, hex, as v1=', () => {
    // A vector computed outside this code: printf '%s' 'j:1-0.1700000000.<body>' | openssl dgst -sha256 -hmac <secret>
    expect(webhookSignature(secret, 'j:1-0', 1_700_000_000, body)).toBe('v1=328d50c3a37546d63f7cb61390d61367d95e9c4029632dc9b6ca9470c0d424d4');
  });

  it('verifies its own signature, and refuses another body, id, timestamp, secret or a stale timestamp', () => {
    const now = 1_700_000_000;
    const sig = webhookSignature(secret, 'j:1-0', now, body);
    const ok = (header: string, id = 'j:1-0', ts = String(now), b = body, s = secret, at = now) => verifyWebhookSignature(s, header, id, ts, b, { nowSeconds: at });
    expect(ok(sig)).toBe(true);
    expect(ok(`v1=${'0'.repeat(64)} ${sig}`)).toBe(true);
    expect(ok(sig, 'j:2-0')).toBe(false);
    expect(ok(sig, 'j:1-0', String(now + 1))).toBe(false);
    expect(ok(sig, 'j:1-0', String(now), `${body} `)).toBe(false);
    expect(ok(sig, 'j:1-0', String(now), body, 'another-secret-0123456')).toBe(false);
    expect(ok(sig, 'j:1-0', String(now), body, secret, now + 301)).toBe(false);
    expect(ok(sig, 'j:1-0', 'soon')).toBe(false);
    expect(ok('v1=zz')).toBe(false);
  });
});

describe('per-tenant webhook secrets', () => {
  const master = 'master-key-0123456789';

  it('derives whsec_ + base64url(HMAC-SHA256(master, "longshot.webhook.tenant\\0<tenant>\\0<generation>"))', () => {
    // A vector computed outside this code:
    // printf 'longshot.webhook.tenant\000acme\000%s' 0 | openssl dgst -sha256 -hmac <master> -binary | base64 | tr '+/' '-_' | tr -d =
    expect(deriveTenantSecret(master, 'acme', 0)).toBe('whsec_YzV41goaVBDhK0Qyh4aMS1zOL83GNUfbqFOwsJ57bcg');
  });

  it('gives every tenant, generation and master key its own secret', () => {
    const secrets = [
      deriveTenantSecret(master, 'acme', 0),
      deriveTenantSecret(master, 'globex', 0),
      deriveTenantSecret(master, 'acme', 1),
      deriveTenantSecret('another-master-key-0123', 'acme', 0),
      // The separators keep "tenant + generation" from being read another way.
      deriveTenantSecret(master, 'acme1', 0),
    ];
    expect(new Set(secrets).size).toBe(secrets.length);
    for (const s of secrets) expect(s).toMatch(/^whsec_[A-Za-z0-9_-]{43}$/);
    expect(deriveTenantSecret(master, 'acme', 0)).toBe(secrets[0]);
  });

  it('keeps the previous secret signing until the grace period after a rotation ends (injected clock)', () => {
    const graceMs = 86_400_000;
    const rotatedAt = Date.UTC(2026, 0, 1);
    expect(tenantSecret(master, 'acme', { generation: 0, rotatedAt: null }, graceMs, rotatedAt)).toEqual({ tenant: 'acme', secret: deriveTenantSecret(master, 'acme', 0), generation: 0, previous: null });
    const rotated = { generation: 2, rotatedAt };
    const during = tenantSecret(master, 'acme', rotated, graceMs, rotatedAt + graceMs - 1);
    expect(during).toEqual({
      tenant: 'acme',
      secret: deriveTenantSecret(master, 'acme', 2),
      generation: 2,
      previous: { secret: deriveTenantSecret(master, 'acme', 1), expiresAt: '2026-01-02T00:00:00.000Z' },
    });
    expect(signingSecretsOf(during)).toEqual([during.secret, during.previous!.secret]);
    const after = tenantSecret(master, 'acme', rotated, graceMs, rotatedAt + graceMs);
    expect(after.previous).toBeNull();
    expect(signingSecretsOf(after)).toEqual([deriveTenantSecret(master, 'acme', 2)]);
    // No grace: the old secret stops at once.
    expect(tenantSecret(master, 'acme', rotated, 0, rotatedAt).previous).toBeNull();
  });

  it('signs with every secret of a rotation, current first; a receiver with either verifies', () => {
    const [current, previous] = [deriveTenantSecret(master, 'acme', 1), deriveTenantSecret(master, 'acme', 0)];
    const body = '{"id":"j:1-0"}';
    const header = webhookSignatures([current, previous], 'j:1-0', 1_700_000_000, body);
    expect(header.split(' ')).toEqual([webhookSignature(current, 'j:1-0', 1_700_000_000, body), webhookSignature(previous, 'j:1-0', 1_700_000_000, body)]);
    const verify = (secret: string) => verifyWebhookSignature(secret, header, 'j:1-0', '1700000000', body, { nowSeconds: 1_700_000_000 });
    expect(verify(current)).toBe(true);
    expect(verify(previous)).toBe(true);
    expect(verify(deriveTenantSecret(master, 'globex', 0))).toBe(false);
  });

  it('checks the tenant query parameter against its field table', () => {
    expect(parseWebhookSecretQuery({})).toEqual({ tenant: null });
    expect(parseWebhookSecretQuery({ tenant: 'acme', other: 'ignored' })).toEqual({ tenant: 'acme' });
    for (const bad of ['Acme', '', '-x', 'a'.repeat(65), ['acme', 'globex']]) {
      const e = (() => {
        try {
          return parseWebhookSecretQuery({ tenant: bad });
        } catch (x) {
          return x;
        }
      })();
      expect(e, JSON.stringify(bad)).toBeInstanceOf(SpecError);
      expect((e as SpecError).field).toBe('tenant');
    }
  });
});

describe('webhook retry back-off', () => {
  it('doubles from the base up to the cap, with a jitter of +-20% that is the same for the same event and attempt', () => {
    for (let attempt = 1; attempt <= 12; attempt++) {
      const d = retryDelayMs('j:1-0', attempt, 1000, 60_000);
      const nominal = Math.min(60_000, 1000 * 2 ** (attempt - 1));
      expect(d, `attempt ${attempt}`).toBeGreaterThanOrEqual(nominal * 0.8);
      expect(d, `attempt ${attempt}`).toBeLessThan(nominal * 1.2);
      expect(retryDelayMs('j:1-0', attempt, 1000, 60_000)).toBe(d);
    }
    const spread = new Set(Array.from({ length: 20 }, (_, i) => retryDelayMs(`j:${i}-0`, 3, 1000, 60_000)));
    expect(spread.size).toBeGreaterThan(10);
  });
});

describe('webhook sender', () => {
  /** A local receiver: `/redirect` answers 302, `/silent` never answers, anything else 204. It records what it got. */
  const seen: { url: string; host: string; body: string }[] = [];
  let server: http.Server;
  let port: number;
  beforeAll(async () => {
    server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        seen.push({ url: req.url ?? '', host: req.headers.host ?? '', body: Buffer.concat(chunks).toString() });
        if (req.url === '/silent') return;
        if (req.url === '/redirect') res.writeHead(302, { location: `http://127.0.0.1:${port}/elsewhere` }).end();
        else res.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(() => {
    server.closeAllConnections();
    server.close();
  });
  const sender = (allow: string[], table: Record<string, string[]>) =>
    new WebhookSender(new DestinationGuard(new AddressPolicy(allow), 5000, async (host) => (table[host] ?? []).map((address) => ({ address, family: 4 as const }))));

  it('connects to the vetted address with the URL host in Host, and follows no redirect', async () => {
    seen.length = 0;
    const s = sender(['127.0.0.0/8'], { 'hooks.test': ['127.0.0.1'] });
    expect(await s.post(new URL(`http://hooks.test:${port}/in?k=v`), '{"a":1}', { 'x-test': '1' }, 5000)).toEqual({ kind: 'response', status: 204 });
    expect(seen).toEqual([{ url: '/in?k=v', host: `hooks.test:${port}`, body: '{"a":1}' }]);
    expect(await s.post(new URL(`http://hooks.test:${port}/redirect`), '{}', {}, 5000)).toEqual({ kind: 'response', status: 302 });
    expect(seen.map((r) => r.url)).toEqual(['/in?k=v', '/redirect']);
  });

  it('tries the next address of the host when one refuses the connection', async () => {
    seen.length = 0;
    // Nothing listens on 127.0.0.2 at that port.
    const s = sender(['127.0.0.0/8'], { 'hooks.test': ['127.0.0.2', '127.0.0.1'] });
    expect(await s.post(new URL(`http://hooks.test:${port}/in`), '{}', {}, 5000)).toEqual({ kind: 'response', status: 204 });
    expect(seen).toHaveLength(1);
  });

  it('refuses at delivery a host that resolves to a refused address now, without connecting', async () => {
    seen.length = 0;
    const r = await sender([], { 'hooks.test': ['127.0.0.1'] }).post(new URL(`http://hooks.test:${port}/in`), '{}', {}, 5000);
    expect(r.kind).toBe('refused');
    expect(await sender([], {}).post(new URL(`http://nowhere.test:${port}/in`), '{}', {}, 5000)).toMatchObject({ kind: 'error', message: expect.stringMatching(/does not resolve/) });
    expect(seen).toEqual([]);
  });

  it('gives up on a receiver that does not answer within the timeout', async () => {
    const r = await sender(['127.0.0.0/8'], {}).post(new URL(`http://127.0.0.1:${port}/silent`), '{}', {}, 300);
    expect(r).toEqual({ kind: 'error', message: 'no answer within 300 ms' });
  });
});

describe('webhook submit checks', () => {
  it('refuses a webhook when the controller has no signing secret, naming the field', async () => {
    const off = new TenantSecretService({ webhooks: { masterSecret: null } } as ControllerConfig, null as never, null as never, null as never);
    const service = new WebhookService(null as never, new DestinationGuard(new AddressPolicy([]), 5000), off);
    const e = await service.check({ url: new URL('https://hooks.example.com/'), events: ['succeeded'] }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SpecError);
    expect((e as SpecError).field).toBe('webhook');
    expect((e as Error).message).toMatch(/LONGSHOT_WEBHOOK_SECRET/);
  });
});
