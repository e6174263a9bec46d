import { Redis } from 'ioredis';
import { ApiKeyStore, TENANT_PATTERN, type ApiKeyRecord } from '@longshot/cache';
import { logger } from '@longshot/telemetry';
import { parseCommand, table, UsageError, type CommandSpec } from './args';
import { loadCliConfig } from './config';

/*
 * `longshot keys`: API key management. Operator tooling that talks to the cluster's Redis
 * directly (the first operator key cannot come from an API that needs one); every creation and
 * revocation is one structured log line on stderr, and controllers count keys by role and state
 * in longshot_api_keys (docs/operations.md "API keys").
 */

const log = logger('keys');

const REDIS_FLAG = { value: 'URL', help: "the cluster's Redis (or set REDIS_URL)", default: 'redis://127.0.0.1:6379' } as const;

export const KEYS_CREATE = {
  name: 'keys create',
  summary: 'create an API key for a tenant (printed once; Redis keeps only its hash)',
  usage: 'longshot keys create --tenant NAME [--operator] [--redis URL]',
  flags: {
    tenant: { value: 'NAME', help: `whose jobs the key submits and sees (${TENANT_PATTERN.source})` },
    operator: { help: 'an operator key: sees every tenant, /v1/workers, /metrics, /docs' },
    redis: REDIS_FLAG,
  },
  run: (argv: string[]) => createCommand(argv),
} satisfies CommandSpec;

export const KEYS_LIST = {
  name: 'keys list',
  summary: 'list API keys (ids, tenants, roles; never secrets)',
  usage: 'longshot keys list [--redis URL] [--json]',
  flags: { redis: REDIS_FLAG, json: { help: 'one JSON object per key' } },
  run: (argv: string[]) => listCommand(argv),
} satisfies CommandSpec;

export const KEYS_REVOKE = {
  name: 'keys revoke',
  summary: 'revoke an API key by id (its sessions and signed URLs stop working too)',
  usage: 'longshot keys revoke ID [--redis URL]',
  flags: { redis: REDIS_FLAG },
  positionals: ['ID'],
  run: (argv: string[]) => revokeCommand(argv),
} satisfies CommandSpec;

export const KEYS = {
  name: 'keys',
  summary: 'create, list and revoke API keys',
  usage: 'longshot keys create|list|revoke ...',
  flags: {},
  sub: [KEYS_CREATE, KEYS_LIST, KEYS_REVOKE],
} satisfies CommandSpec;

async function withStore<T>(url: string | undefined, fn: (store: ApiKeyStore) => Promise<T>): Promise<T> {
  const u = url ?? process.env.REDIS_URL ?? REDIS_FLAG.default;
  if (!/^rediss?:\/\//.test(u)) throw new UsageError(`--redis: expected a redis:// or rediss:// URL, got '${u}'`);
  const redis = new Redis(u, { maxRetriesPerRequest: 1, connectTimeout: 5000, lazyConnect: true, retryStrategy: () => null });
  try {
    await redis.connect().catch((e: Error) => {
      throw new UsageError(`--redis: cannot reach ${u}: ${e.message}`);
    });
    return await fn(new ApiKeyStore(redis, loadCliConfig(process.env).keys));
  } finally {
    redis.disconnect();
  }
}

async function createCommand(argv: string[]): Promise<void> {
  const f = parseCommand(KEYS_CREATE, argv).values;
  if (f.tenant === undefined) throw new UsageError('--tenant: required');
  if (!TENANT_PATTERN.test(f.tenant)) throw new UsageError(`--tenant: must match ${TENANT_PATTERN.source}, got '${f.tenant}'`);
  const tenant = f.tenant;
  const { record, token } = await withStore(f.redis, (s) => s.create({ tenant, role: f.operator ? 'operator' : 'tenant' }));
  log.info('API key created', { key: record.id, tenant: record.tenant, role: record.role });
  process.stdout.write(`${token}\n`);
}

async function listCommand(argv: string[]): Promise<void> {
  const f = parseCommand(KEYS_LIST, argv).values;
  const all = await withStore(f.redis, (s) => s.list());
  if (f.json) return void process.stdout.write(all.map((k) => `${JSON.stringify(view(k))}\n`).join(''));
  const rows = all.map((k) => [k.id, `${k.tenant} ${k.role} created ${new Date(k.createdAt).toISOString()}${k.revokedAt === null ? '' : ` revoked ${new Date(k.revokedAt).toISOString()}`}`] as const);
  process.stdout.write(rows.length ? `${table(rows, 14).join('\n')}\n` : 'no API keys\n');
}

async function revokeCommand(argv: string[]): Promise<void> {
  const { values: f, positionals: [id] } = parseCommand(KEYS_REVOKE, argv);
  const rec = await withStore(f.redis, (s) => s.revoke(id));
  if (!rec) throw new UsageError(`key ${id}: no such API key ('longshot keys list' shows the ids)`);
  log.info('API key revoked', { key: rec.id, tenant: rec.tenant, role: rec.role });
  process.stdout.write(`${rec.id} revoked\n`);
}

function view(k: ApiKeyRecord) {
  return { id: k.id, tenant: k.tenant, role: k.role, createdAt: new Date(k.createdAt).toISOString(), revokedAt: k.revokedAt === null ? null : new Date(k.revokedAt).toISOString() };
}
