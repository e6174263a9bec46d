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
    const sample = { string: 'x', number: 1.5, integer: 2 } as const;
    for (const [name, spec] of Object.entries(SUBMIT_SCHEMA.properties)) {
      const special: Record<string, string> = { size: '256x128', textEmbeddingsId: '123e4567-e89b-42d3-a456-426614174000', model: 'wan2.1-t2v-1.3b' };
      const value = 'enum' in spec ? spec.enum[0] : (special[name] ?? sample[spec.type]);
      expect(refusedField({ [name]: value }), name).toBeNull();
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

});
