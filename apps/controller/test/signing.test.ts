import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { signedUrl, signPath, signSession, verifyPath, verifySession } from '../src/signing';

const secret = randomBytes(32);
const other = randomBytes(32);
const key = '0123456789ab';
const now = 1_800_000_000;

describe('session values', () => {
  it('verify with the secret until they expire', () => {
    const v = signSession(key, now + 60, secret);
    expect(verifySession(v, secret, now)).toBe(key);
    expect(verifySession(v, secret, now + 60)).toBeNull();
    expect(verifySession(v, other, now)).toBeNull();
  });

  it('refuse an edited expiry, key id or signature, and any other shape', () => {
    const v = signSession(key, now + 60, secret);
    // Every character of the signature counts, the last one too (its low bits are padding in
    // base64url: a byte-wise comparison would accept a neighbouring character).
    for (const i of [v.length - 1, v.length - 20]) {
      const edited = `${v.slice(0, i)}${v[i] === 'A' ? 'B' : String.fromCharCode(v.charCodeAt(i) ^ 1)}${v.slice(i + 1)}`;
      expect(verifySession(edited, secret, now)).toBeNull();
    }
    expect(verifySession(v.replace(`.${now + 60}.`, `.${now + 99999}.`), secret, now)).toBeNull();
    expect(verifySession(v.replace(key, 'ba9876543210'), secret, now)).toBeNull();
    for (const bad of ['', 'x', `${v}x`, v.split('.').slice(0, 2).join('.')]) expect(verifySession(bad, secret, now)).toBeNull();
  });
});

describe('signed URLs', () => {
  const path = '/v1/videos/2f1c0a44-9b7e-4a57-8a55-6b6f8e0c1d2e/content';

  it('verify for exactly the path they were made for, until they expire', () => {
    const q = signPath(path, key, now + 60, secret);
    expect(verifyPath(path, q, secret, now)).toBe(key);
    expect(verifyPath(path.replace('/content', '/events'), q, secret, now)).toBeNull();
    expect(verifyPath(path.replace('2f1c', '3f1c'), q, secret, now)).toBeNull();
    expect(verifyPath(path, q, secret, now + 60)).toBeNull();
    expect(verifyPath(path, { ...q, exp: String(now + 3600) }, secret, now)).toBeNull();
    expect(verifyPath(path, q, other, now)).toBeNull();
    expect(verifyPath(path, { ...q, sig: [q.sig] }, secret, now)).toBeNull();
  });

  it('are the path with key, exp and sig in the query', () => {
    const u = new URL(signedUrl(path, key, now + 60, secret), 'http://x');
    expect(u.pathname).toBe(path);
    expect(verifyPath(u.pathname, Object.fromEntries(u.searchParams), secret, now)).toBe(key);
  });

  it('cannot pass for a session, nor a session for a URL', () => {
    const q = signPath(path, key, now + 60, secret);
    expect(verifySession(`${key}.${q.exp}.${q.sig}`, secret, now)).toBeNull();
    const [, exp, sig] = signSession(key, now + 60, secret).split('.');
    expect(verifyPath(path, { key, exp, sig }, secret, now)).toBeNull();
  });
});
