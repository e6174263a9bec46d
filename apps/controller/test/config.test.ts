import { describe, expect, it } from 'vitest';
import { isLoopback, loadConfig, parseTenantLimits } from '../src/config';
import { queuePrefix } from '../src/queue';

const env = { LONGSHOT_GRANT_KEYS: `k:${'s'.repeat(32)}` };

describe('controller config: identity', () => {
  it('requires API keys unless --no-auth, which only a loopback bind accepts', () => {
    expect(loadConfig([], env).auth).toBe(true);
    expect(loadConfig(['--no-auth', '--host', '127.0.0.1'], env).auth).toBe(false);
    expect(loadConfig(['--no-auth', '--host', '::1'], env).auth).toBe(false);
    for (const host of ['0.0.0.0', '::', '10.0.0.5', 'controller.example']) {
      expect(() => loadConfig(['--no-auth', '--host', host], env)).toThrow(/--no-auth is only allowed on a loopback bind/);
    }
    // The default bind is every interface: --no-auth alone is refused.
    expect(() => loadConfig(['--no-auth'], env)).toThrow(/loopback/);
    expect(isLoopback('127.1.2.3')).toBe(true);
    expect(isLoopback('128.0.0.1')).toBe(false);
  });

  it('derives one session secret from the shared grant key unless LONGSHOT_SESSION_SECRET is set', () => {
    const a = loadConfig([], env).sessionSecret;
    expect(loadConfig([], env).sessionSecret.equals(a)).toBe(true);
    expect(a.equals(Buffer.from('s'.repeat(32)))).toBe(false);
    expect(loadConfig([], { ...env, LONGSHOT_SESSION_SECRET: 'x'.repeat(32) }).sessionSecret.toString()).toBe('x'.repeat(32));
    expect(() => loadConfig([], { ...env, LONGSHOT_SESSION_SECRET: 'short' })).toThrow(/LONGSHOT_SESSION_SECRET/);
  });

  it('plans on a known hardware profile, h100-100gbe by default, naming the variable of an unknown one', () => {
    expect(loadConfig([], env).plannerProfile).toBe('h100-100gbe');
    expect(loadConfig([], { ...env, LONGSHOT_PLANNER_PROFILE: 'h100-nvlink' }).plannerProfile).toBe('h100-nvlink');
    expect(() => loadConfig([], { ...env, LONGSHOT_PLANNER_PROFILE: 'a100' })).toThrow(/^LONGSHOT_PLANNER_PROFILE: unknown hardware profile 'a100' \(known: h100-nvlink, h100-100gbe, rtx4090-pcie\)/);
  });

  it('reads per-tenant limits over the defaults, naming a bad entry', () => {
    const defaults = { requestsPerMinute: 600, maxJobCost: 0 };
    expect(parseTenantLimits('{"acme":{"maxJobCost":5}}', defaults).get('acme')).toEqual({ requestsPerMinute: 600, maxJobCost: 5 });
    expect(() => parseTenantLimits('{"acme":{"rpm":5}}', defaults)).toThrow(/acme\.rpm is not a limit/);
    expect(() => parseTenantLimits('{"acme":{"maxJobCost":-1}}', defaults)).toThrow(/acme\.maxJobCost/);
    expect(() => parseTenantLimits('[', defaults)).toThrow(/LONGSHOT_TENANT_LIMITS/);
    expect(loadConfig([], { ...env, LONGSHOT_RATE_LIMIT_PER_MINUTE: '0' }).limits.requestsPerMinute).toBe(0);
  });
});

describe('controller config: webhooks', () => {
  it('takes LONGSHOT_WEBHOOK_SECRET as the master key (off without it) and a rotation grace of a day unless set', () => {
    expect(loadConfig([], env).webhooks).toMatchObject({ masterSecret: null, rotationGraceSeconds: 86_400 });
    const on = loadConfig([], { ...env, LONGSHOT_WEBHOOK_SECRET: 'm'.repeat(16), LONGSHOT_WEBHOOK_ROTATION_GRACE_S: '0' }).webhooks;
    expect(on).toMatchObject({ masterSecret: 'm'.repeat(16), rotationGraceSeconds: 0 });
    expect(() => loadConfig([], { ...env, LONGSHOT_WEBHOOK_SECRET: 'short' })).toThrow(/LONGSHOT_WEBHOOK_SECRET/);
    expect(() => loadConfig([], { ...env, LONGSHOT_WEBHOOK_ROTATION_GRACE_S: '-1' })).toThrow(/LONGSHOT_WEBHOOK_ROTATION_GRACE_S/);
  });
});

describe('controller config: keys the libraries used to read themselves', () => {
  it('LONGSHOT_KEY_ROOT: the root of every Redis key (and the queue\'s), default longshot; a bad root names the variable', () => {
    expect(loadConfig([], env).keys.root).toBe('longshot');
    expect(loadConfig([], { ...env, LONGSHOT_KEY_ROOT: '' }).keys.root).toBe('longshot');
    const tenant = loadConfig([], { ...env, LONGSHOT_KEY_ROOT: 'tenant-a' });
    expect(tenant.keys.jobPrefix('j1')).toBe('tenant-a:job:{j1}');
    expect(queuePrefix(tenant.keys)).toBe('tenant-a:{bull}');
    expect(() => loadConfig([], { ...env, LONGSHOT_KEY_ROOT: 'a:b' })).toThrow(/^LONGSHOT_KEY_ROOT: key root "a:b" must not contain ':'/);
    expect(() => loadConfig([], { ...env, LONGSHOT_KEY_ROOT: 'a b' })).toThrow(/^LONGSHOT_KEY_ROOT: .*whitespace/);
  });

  it('LONGSHOT_LOG_LEVEL: any case, default info; a typo falls back to info (with one warning line)', () => {
    expect(loadConfig([], env).logLevel).toBe('info');
    expect(loadConfig([], { ...env, LONGSHOT_LOG_LEVEL: 'WARN' }).logLevel).toBe('warn');
    expect(loadConfig([], { ...env, LONGSHOT_LOG_LEVEL: 'debug' }).logLevel).toBe('debug');
    expect(loadConfig([], { ...env, LONGSHOT_LOG_LEVEL: 'verbose' }).logLevel).toBe('info');
  });
});
