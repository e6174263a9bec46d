import { describe, expect, it } from 'vitest';
import { SpecError } from '@longshot/planner';
import { DEFAULT_PRIORITY, MAX_PRIORITY, parseSubmit, SUBMIT_SCHEMA } from '../src/request';

/** The field a bad body is refused for, or null when it is accepted. */
function refusedField(body: unknown): string | null {
  try {
    parseSubmit(body);
    return null;
  } catch (e) {
    expect(e).toBeInstanceOf(SpecError);
    return (e as SpecError).field;
  }
}

describe('POST /v1/videos body', () => {
  it('accepts every field the OpenAPI schema declares, with a value of its type', () => {
    const sample = { string: 'x', number: 1.5, integer: 2, boolean: true, array: ['x'] } as const;
    const hook = 'https://hooks.example.com/longshot?token=abc';
    const special: Record<string, unknown> = { size: '256x128', textEmbeddingsId: '123e4567-e89b-42d3-a456-426614174000', model: 'wan2.1-t2v-1.3b', webhook: hook, webhookEvents: ['succeeded'] };
    // Fields that are only accepted beside another.
    const companion: Record<string, object> = { webhookEvents: { webhook: hook } };
    for (const [name, spec] of Object.entries(SUBMIT_SCHEMA.properties)) {
      const value = 'enum' in spec ? spec.enum[0] : (special[name] ?? sample[spec.type]);
      expect(refusedField({ ...companion[name], [name]: value }), name).toBeNull();
    }
  });

  it('refuses what the schema rules out, naming the field', () => {
    const cases: [unknown, string][] = [
      [[], 'body'],
      [{ colour: 'red' }, 'colour'],
      [{ prompt: 3 }, 'prompt'],
      [{ frames: 2.5 }, 'frames'],
      [{ seconds: 'long' }, 'seconds'],
      [{ guidance: null }, 'guidance'],
      [{ sampler: 'ddim' }, 'sampler'],
      [{ size: '256 by 256' }, 'size'],
      [{ size: '256x256', width: 256 }, 'size'],
      [{ priority: 0 }, 'priority'],
      [{ priority: MAX_PRIORITY + 1 }, 'priority'],
      // Paths are no longer accepted anywhere: embeddings are uploaded, models are names.
      [{ textEmbeddings: '/etc/shadow' }, 'textEmbeddings'],
      [{ textEmbeddingsId: '../../etc/shadow' }, 'textEmbeddingsId'],
      [{ model: '/etc/shadow' }, 'model'],
      [{ model: '../tiny' }, 'model'],
      [{ model: 'models/../../etc' }, 'model'],
      [{ model: '.hidden' }, 'model'],
      // Inherited properties are not fields.
      [JSON.parse('{"constructor": 1}'), 'constructor'],
      [JSON.parse('{"toString": "x"}'), 'toString'],
      [JSON.parse('{"__proto__": {"prompt": "x"}}'), '__proto__'],
      [JSON.parse('{"hasOwnProperty": 2}'), 'hasOwnProperty'],
      // Webhooks: an absolute http(s) URL without credentials or fragment; known events, with a URL.
      [{ webhook: 'not a url' }, 'webhook'],
      [{ webhook: '/relative/path' }, 'webhook'],
      [{ webhook: 'ftp://hooks.example.com/x' }, 'webhook'],
      [{ webhook: 'file:///etc/passwd' }, 'webhook'],
      [{ webhook: 'https://user:secret@hooks.example.com/x' }, 'webhook'],
      [{ webhook: 'https://token@hooks.example.com/x' }, 'webhook'],
      [{ webhook: 'https://hooks.example.com/x#frag' }, 'webhook'],
      [{ webhook: `https://hooks.example.com/${'a'.repeat(2048)}` }, 'webhook'],
      [{ webhook: 42 }, 'webhook'],
      [{ webhookEvents: ['succeeded'] }, 'webhookEvents'],
      [{ webhook: 'https://hooks.example.com/x', webhookEvents: 'succeeded' }, 'webhookEvents'],
      [{ webhook: 'https://hooks.example.com/x', webhookEvents: [] }, 'webhookEvents'],
      [{ webhook: 'https://hooks.example.com/x', webhookEvents: ['completed'] }, 'webhookEvents'],
      [{ webhook: 'https://hooks.example.com/x', webhookEvents: [3] }, 'webhookEvents'],
      [{ webhook: 'https://hooks.example.com/x', webhookEvents: ['failed', 'failed'] }, 'webhookEvents'],
      // Layout: U a whole number from 1, CFG parallel a JSON boolean (not "true", not 1).
      [{ ulysses: 0 }, 'ulysses'],
      [{ ulysses: -2 }, 'ulysses'],
      [{ ulysses: 1.5 }, 'ulysses'],
      [{ ulysses: '2' }, 'ulysses'],
      [{ cfgParallel: 'true' }, 'cfgParallel'],
      [{ cfgParallel: 1 }, 'cfgParallel'],
      [{ cfgParallel: null }, 'cfgParallel'],
    ];
    for (const [body, field] of cases) expect(refusedField(body), JSON.stringify(body)).toBe(field);
  });

  it('maps size to width and height and fills the defaults', () => {
    const r = parseSubmit({ prompt: 'a boat', size: '320x192' });
    expect(r.job).toMatchObject({ prompt: 'a boat', width: 320, height: 192 });
    expect(r.priority).toBe(DEFAULT_PRIORITY);
    expect(r.autoStages).toBe(true);
    expect(parseSubmit({ stages: 2 }).autoStages).toBe(false);
  });

  it('takes the layout fields as given; with stages, the omitted ones are one worker per stage, without, the planner\'s (null)', () => {
    expect(parseSubmit({ stages: 2, ulysses: 2, cfgParallel: true }).layout).toEqual({ ulysses: 2, cfgParallel: true });
    expect(parseSubmit({ stages: 2 }).layout).toEqual({ ulysses: 1, cfgParallel: false });
    expect(parseSubmit({ stages: 2, cfgParallel: true }).layout).toEqual({ ulysses: 1, cfgParallel: true });
    expect(parseSubmit({}).layout).toEqual({ ulysses: null, cfgParallel: null });
    expect(parseSubmit({ ulysses: 3 }).layout).toEqual({ ulysses: 3, cfgParallel: null });
    expect(parseSubmit({ cfgParallel: false })).toMatchObject({ autoStages: true, layout: { ulysses: null, cfgParallel: false } });
    expect(SUBMIT_SCHEMA.properties.cfgParallel.type).toBe('boolean');
    expect(SUBMIT_SCHEMA.properties.ulysses.minimum).toBe(1);
  });

  it('reads a webhook: its URL, and every event but progress unless webhookEvents chooses', () => {
    expect(parseSubmit({ prompt: 'a boat' }).webhook).toBeNull();
    const plain = parseSubmit({ webhook: 'http://hooks.example.com:8443/in?k=v' }).webhook!;
    expect(plain.url.href).toBe('http://hooks.example.com:8443/in?k=v');
    expect(plain.events).toEqual(['queued', 'started', 'block', 'failover', 'retrying', 'succeeded', 'failed', 'canceled']);
    expect(parseSubmit({ webhook: 'https://[2001:db8::1]/in', webhookEvents: ['progress', 'succeeded'] }).webhook!.events).toEqual(['progress', 'succeeded']);
  });

  it('never echoes a refused webhook URL (it may carry a token)', () => {
    for (const webhook of ['https://user:hunter2@hooks.example.com/x', 'gopher://hunter2.example.com/', 'https://hooks.example.com/hunter2#hunter2']) {
      expect(() => parseSubmit({ webhook })).toThrow(SpecError);
      expect(() => parseSubmit({ webhook })).not.toThrow(/hunter2/);
    }
  });

});
