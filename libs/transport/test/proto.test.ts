import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';

const root = path.resolve(__dirname, '../../..');
const committed = path.join(root, 'libs/transport/src/gen');

function listFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const entry of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, entry.name);
      if (entry.isDirectory()) walk(p);
      else out.push(path.relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

describe('proto/generate.sh', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-proto-'));
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('reproduces the committed generated code', () => {
    execFileSync('bash', [path.join(root, 'proto/generate.sh'), tmp], { cwd: root, stdio: 'pipe' });
    const fresh = listFiles(tmp);
    const stale = 'generated code is stale: run proto/generate.sh';
    expect(fresh.length, 'generate.sh produced no files').toBeGreaterThan(0);
    expect(listFiles(committed), stale).toEqual(fresh);
    for (const file of fresh) {
      const want = fs.readFileSync(path.join(tmp, file), 'utf8');
      const have = fs.readFileSync(path.join(committed, file), 'utf8');
      expect(have === want, `${stale} (${file} differs)`).toBe(true);
    }
  });

  it('is deterministic', () => {
    const again = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-proto-'));
    try {
      execFileSync('bash', [path.join(root, 'proto/generate.sh'), again], { cwd: root, stdio: 'pipe' });
      for (const file of listFiles(tmp)) {
        expect(fs.readFileSync(path.join(again, file), 'utf8')).toBe(fs.readFileSync(path.join(tmp, file), 'utf8'));
      }
    } finally {
      fs.rmSync(again, { recursive: true, force: true });
    }
  });
});
