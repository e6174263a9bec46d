import { describe, expect, it } from 'vitest';
import { GrantError, parseGrantKeys, signGrant, verifyGrant, type SessionGrant } from '../src';

const grant = (over: Partial<SessionGrant> = {}): SessionGrant => ({ job: 'j1', run: 'ctrl/1', stage: 0, layerBegin: 0, layerEnd: 4, keyPrefix: 'longshot:job:{j1}', expiresAt: 2_000_000, ...over });
const NOW = 1_000_000;
const reason = (f: () => unknown): string | null => {
  try {
    f();
    return null;
  } catch (e) {
    return e instanceof GrantError ? e.reason : `not a GrantError: ${(e as Error).message}`;
  }
};

describe('session grants', () => {
  const [k1] = parseGrantKeys(`k1:${'a'.repeat(32)}`);
  const [k2] = parseGrantKeys(`k2:${'b'.repeat(32)}`);

  it('round-trips the claims with the key that signed them', () => {
    expect(verifyGrant(signGrant(grant(), k1), [k1], NOW)).toEqual(grant());
  });

  it('rotates without downtime: workers with [new, old] accept both; once old is dropped, its grants are refused', () => {
    const rotating = parseGrantKeys(`k2:${'b'.repeat(32)},k1:${'a'.repeat(32)}`);
    expect(rotating[0].id).toBe('k2'); // the first one signs
    expect(verifyGrant(signGrant(grant(), k1), rotating, NOW).job).toBe('j1');
    expect(verifyGrant(signGrant(grant(), k2), rotating, NOW).job).toBe('j1');
    expect(reason(() => verifyGrant(signGrant(grant(), k1), [k2], NOW))).toBe('unknown-key');
  });

  it('refuses missing, malformed, forged, tampered and expired grants', () => {
    const token = signGrant(grant(), k1);
    const [id, body, mac] = token.split('.');
    const other = Buffer.from(JSON.stringify(grant({ keyPrefix: 'longshot:job:{victim}' }))).toString('base64url');
    expect(reason(() => verifyGrant('', [k1], NOW))).toBe('missing');
    expect(reason(() => verifyGrant('a.b', [k1], NOW))).toBe('malformed');
    expect(reason(() => verifyGrant(`${id}.${other}.${mac}`, [k1], NOW))).toBe('bad-signature');
    expect(reason(() => verifyGrant(signGrant(grant(), { id: 'k1', secret: Buffer.alloc(32) }), [k1], NOW))).toBe('bad-signature');
    expect(reason(() => verifyGrant(`${id}.${body}.${mac.slice(0, -2)}`, [k1], NOW))).toBe('bad-signature');
    expect(reason(() => verifyGrant(signGrant(grant({ expiresAt: NOW }), k1), [k1], NOW))).toBe('expired');
    // Signed, but not the claims a grant has.
    const bad = { ...grant(), stage: 'head' } as unknown as SessionGrant;
    expect(reason(() => verifyGrant(signGrant(bad, k1), [k1], NOW))).toBe('malformed');
  });

  it('checks the key configuration', () => {
    expect(() => parseGrantKeys('')).toThrow(/at least one id:secret/);
    expect(() => parseGrantKeys('k1:short')).toThrow(/at least 32 characters/);
    expect(() => parseGrantKeys(`k 1:${'a'.repeat(32)}`)).toThrow(/id of 1-32 letters/);
    expect(() => parseGrantKeys(`k1:${'a'.repeat(32)},k1:${'b'.repeat(32)}`)).toThrow(/listed twice/);
    expect(() => parseGrantKeys(['a', 'b', 'c'].map((k) => `${k}:${k.repeat(32)}`).join(','))).toThrow(/at most two keys/);
  });
});
