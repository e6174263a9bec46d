import { describe, expect, it } from 'vitest';
import { DEFAULT_KEYS, KeySchema, jobPrefix, keySchemaOf } from '../src';

describe('KeySchema', () => {
  const k = new KeySchema();

  it('puts every key under the root, with a job hash tag', () => {
    const p = k.jobPrefix('job-1');
    expect(p).toBe('longshot:job:{job-1}');
    expect(k.checkpointKey(p)).toBe('longshot:job:{job-1}:checkpoint');
    expect(k.blockKey(p, 3)).toBe('longshot:job:{job-1}:block:3');
    expect(k.frameDigestKey(p, 3)).toBe('longshot:job:{job-1}:frames:3');
    expect(k.jobKeysKey(p)).toBe('longshot:job:{job-1}:keys');
    expect(k.workerKey('w1')).toBe('longshot:{registry}:worker:w1');
    expect(k.workersIndexKey()).toBe('longshot:{registry}:workers');
    expect(k.workerLastSeenKey('w1')).toBe('longshot:{registry}:last-seen:w1');
    expect(k.textEmbeddingKey('ab12')).toBe('longshot:text-embedding:ab12');
    expect(k.jobIdOf(p)).toBe('job-1');
    expect(new KeySchema('tenant').jobPrefix('j')).toBe('tenant:job:{j}');
  });

  it('exports functions over the default root\'s schema, which reads no environment', () => {
    expect(jobPrefix('x')).toBe(DEFAULT_KEYS.jobPrefix('x'));
    expect(DEFAULT_KEYS.root).toBe('longshot');
  });

  it('keySchemaOf: an app\'s configured root, the default when unset or empty; a bad one names where it came from', () => {
    expect(keySchemaOf(undefined, 'LONGSHOT_KEY_ROOT').root).toBe('longshot');
    expect(keySchemaOf('', 'LONGSHOT_KEY_ROOT').root).toBe('longshot');
    expect(keySchemaOf('tenant', 'LONGSHOT_KEY_ROOT').root).toBe('tenant');
    expect(() => keySchemaOf('a:b', 'LONGSHOT_KEY_ROOT')).toThrow(/^LONGSHOT_KEY_ROOT: key root "a:b" must not contain ':'/);
  });

  it.each([
    ['', /non-empty/],
    ['has space', /whitespace/],
    ['tab\there', /whitespace/],
    ['nul\u0000', /control/],
    ['brace}', /brace/],
    ['x'.repeat(257), /at most 256/],
  ])('rejects id %j', (id, message) => {
    expect(() => k.jobPrefix(id)).toThrow(message);
    expect(() => k.workerKey(id)).toThrow(message);
    expect(() => k.textEmbeddingKey(id)).toThrow(message);
  });

  it('rejects a job id or a foreign prefix where a prefix is expected', () => {
    expect(() => k.checkpointKey('job-1')).toThrow(/not a job prefix.*jobPrefix/);
    expect(() => k.blockKey(new KeySchema('other').jobPrefix('j'), 0)).toThrow(/not a job prefix under root "longshot"/);
    expect(() => k.blockKey(k.jobPrefix('j'), -1)).toThrow(/non-negative integer/);
    expect(() => k.blockKey(k.jobPrefix('j'), 1.5)).toThrow(/non-negative integer/);
  });

  it('rejects a root with a separator', () => {
    expect(() => new KeySchema('a:b')).toThrow(/must not contain ':'/);
    expect(() => new KeySchema('')).toThrow(/non-empty/);
  });
});
