import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getConfig, ModelCatalog, ModelNameError, modelsDirFlag, SafetensorsFile, writeSafetensors, writeSeededPipeline } from '../src';

let dir: string;
let models: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-catalog-'));
  models = path.join(dir, 'models');
  fs.mkdirSync(models);
  fs.writeFileSync(path.join(dir, 'secret'), 'root:*:20000:0:99999:7:::\n');
  writeSeededPipeline(path.join(models, 'pipe'), { config: getConfig('tiny'), seed: 0, shards: 1, dtype: 'F32' });
  fs.symlinkSync(path.join(dir, 'secret'), path.join(models, 'link.safetensors'));
  fs.symlinkSync(path.join(models, 'pipe'), path.join(models, 'pipe-link'));
  execFileSync('mkfifo', [path.join(models, 'fifo.safetensors')]);
  fs.mkdirSync(path.join(models, 'empty'));
  fs.writeFileSync(path.join(models, 'notes.txt'), 'hello');
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** The message of the ModelNameError a name is refused with. */
function refusal(catalog: ModelCatalog, name: string): string {
  try {
    catalog.resolve(name);
  } catch (e) {
    expect(e).toBeInstanceOf(ModelNameError);
    return (e as Error).message;
  }
  throw new Error(`${name} was accepted`);
}

describe('ModelCatalog', () => {
  it('serves built-in names and directory entries by name, under that name', () => {
    const c = new ModelCatalog(models);
    expect(c.resolve('tiny').kind).toBe('seeded');
    const pipe = c.resolve('pipe');
    expect([pipe.kind, pipe.id, pipe.config.layers]).toEqual(['pipeline', 'pipe', getConfig('tiny').layers]);
    // Links, FIFOs and other files are not listed either.
    expect(c.names()).toEqual(['wan2.1-t2v-1.3b', 'wan2.1-t2v-14b', 'small', 'tiny', 'longshot-shapes', 'empty', 'pipe']);
  });

  it('refuses paths, traversal, links, FIFOs and other entries without opening them or naming where they are', () => {
    const c = new ModelCatalog(models);
    const cases: [string, RegExp][] = [
      [path.join(dir, 'secret'), /^not a model name/],
      ['/etc/shadow', /^not a model name/],
      ['../secret', /^not a model name/],
      ['pipe/../../secret', /^not a model name/],
      ['..', /^not a model name/],
      ['', /^not a model name/],
      ['constructor', /^unknown model "constructor"/],
      ['__proto__', /^not a model name/],
      ['link.safetensors', /is a symbolic link/],
      ['pipe-link', /is a symbolic link/],
      // lstat says FIFO: refused at once, never opened (opening would block until a writer came).
      ['fifo.safetensors', /neither a pipeline directory nor a regular \.safetensors file/],
      ['notes.txt', /neither a pipeline directory nor a regular \.safetensors file/],
      ['empty', /^model "empty": /],
    ];
    for (const [name, re] of cases) {
      const m = refusal(c, name);
      expect(m, name).toMatch(re);
      expect(m, name).not.toContain(dir);
      expect(m, name).not.toContain('root:');
    }
    // Without a models directory only the built-ins exist.
    expect(refusal(new ModelCatalog(null), 'pipe')).toMatch(/^unknown model "pipe" \(served: wan2\.1-t2v-1\.3b, wan2\.1-t2v-14b, small, tiny, longshot-shapes\)$/);
  });

  it('serves a regular transformer file by its entry name', () => {
    const file = path.join(models, 'tiny-copy.safetensors');
    const st = SafetensorsFile.fromBytes(fs.readFileSync(path.join(models, 'pipe', 'transformer', 'diffusion_pytorch_model.safetensors')), 'x');
    writeSafetensors(file, st.tensorNames().map((name) => ({ name, shape: [...st.info(name).shape], data: st.read(name) })), st.metadata);
    expect(new ModelCatalog(models).resolve('tiny-copy.safetensors').kind).toBe('file');
  });

  it('checks --models-dir once: a directory or nothing', () => {
    expect(modelsDirFlag(undefined)).toBeNull();
    expect(modelsDirFlag(models)).toBe(models);
    expect(() => modelsDirFlag(path.join(dir, 'secret'))).toThrow(/^--models-dir: .* is not a directory$/);
  });
});
