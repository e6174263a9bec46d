import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import { createServer } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { helpText, parseCommand, UsageError, type CommandSpec } from '../src/args';
import { COMMANDS, ROOT_HELP, runCli } from '../src/commands';
import { checkReadable, checkWritable, reportError, unreachable } from '../src/errors';

const bin = path.resolve(__dirname, '../bin/longshot.js');
const run = promisify(execFile);
let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-cli-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

async function longshot(args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    const r = await run(process.execPath, [bin, ...args], { cwd: dir, env: { ...process.env, LONGSHOT_DEBUG: '', LONGSHOT_URL: '' } });
    return { ...r, code: 0 };
  } catch (e) {
    const err = e as { stdout: string; stderr: string; code: number };
    return { stdout: err.stdout, stderr: err.stderr, code: err.code };
  }
}

/** Every command and sub-command, depth first. */
function allSpecs(specs: readonly CommandSpec[] = COMMANDS): CommandSpec[] {
  return specs.flatMap((s) => [s, ...allSpecs(s.sub ?? [])]);
}

async function helpOf(argv: string[]): Promise<string> {
  let text = '';
  const out = new Writable({ write: (chunk, _enc, done) => ((text += String(chunk)), done()) });
  await runCli(argv, out);
  return text;
}

describe('longshot --help', () => {
  it('answers on every command and sub-command, lists every flag the parser accepts, within 80 columns', async () => {
    const specs = allSpecs();
    expect(specs.map((s) => s.name)).toEqual(expect.arrayContaining(['render', 'up', 'submit', 'status', 'fetch', 'cancel', 'model', 'model write', 'model inspect', 'schedule']));
    for (const spec of specs) {
      for (const flag of ['--help', '-h']) {
        const text = await helpOf([...spec.name.split(' '), flag]);
        expect(text, spec.name).toBe(helpText(spec));
        for (const line of text.split('\n')) expect(line.length, `${spec.name}: ${line}`).toBeLessThanOrEqual(80);
        const listed = [...text.matchAll(/^ {2}(--[a-z-]+)/gm)].map((m) => m[1]).filter((f) => f !== '--help');
        expect(listed.sort(), spec.name).toEqual(Object.keys(spec.flags).map((f) => `--${f}`).sort());
        // Every listed flag is one the parser takes (a value where the help shows one).
        for (const name of Object.keys(spec.flags)) {
          const argv = spec.flags[name].value ? [`--${name}`, 'x'] : [`--${name}`];
          expect(() => parseCommand({ ...spec, positionals: undefined }, argv), `${spec.name} --${name}`).not.toThrow();
        }
      }
      for (const sub of spec.sub ?? []) expect(helpText(spec)).toContain(sub.name);
    }
    expect(helpText(COMMANDS.find((c) => c.name === 'render')!)).toMatch(/--url URL[\s\S]*--in-process/);
    expect(await helpOf([])).toBe(ROOT_HELP);
    for (const line of ROOT_HELP.split('\n')) expect(line.length).toBeLessThanOrEqual(80);
  });

  it('exits 0 and prints to stdout from the real binary (submit, status, model write)', async () => {
    for (const args of [['submit', '--help'], ['status', '-h'], ['model', 'write', '--help'], ['--help']]) {
      const r = await longshot(args);
      expect(r.code, args.join(' ')).toBe(0);
      expect(r.stdout, args.join(' ')).toMatch(/usage: longshot|Usage: longshot/);
      expect(r.stderr).toBe('');
    }
  });
});

describe('user errors', () => {
  it('parses flags into one-line usage errors naming the flag or the argument', () => {
    const status = COMMANDS.find((c) => c.name === 'status')!;
    expect(() => parseCommand(status, ['--bogus', 'x'])).toThrow(/unknown flag '--bogus'; see 'longshot status --help'/);
    expect(() => parseCommand(status, [])).toThrow(/status: expected ID, got none/);
    expect(() => parseCommand(status, ['a', 'b'])).toThrow(/expected ID, got 'a b'/);
    expect(parseCommand(status, ['--url', 'http://h', 'job-1', '--json'])).toEqual({ values: { url: 'http://h', json: true }, positionals: ['job-1'] });
  });

  it('maps errors to one line: 2 for the user, 1 otherwise, the stack only with LONGSHOT_DEBUG=1', () => {
    expect(reportError(new UsageError('--out: cannot write /x (permission denied)'))).toEqual({ message: 'longshot: --out: cannot write /x (permission denied)', exitCode: 2 });
    const internal = reportError(new Error('boom\nmore'), false);
    expect(internal.exitCode).toBe(1);
    expect(internal.message).toBe('longshot: boom (LONGSHOT_DEBUG=1 shows where)');
    expect(reportError(new Error('boom'), true).message).toMatch(/boom\n\s+at /);
    const refused = new TypeError('fetch failed', { cause: Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }) });
    expect(unreachable(refused, 'http://127.0.0.1:9')?.message).toMatch(/^cannot reach the controller at http:\/\/127\.0\.0\.1:9 \(ECONNREFUSED\)/);
    expect(unreachable(new Error('other'), 'http://h')).toBeNull();
  });

  it('checks input and output files before anything starts', () => {
    expect(() => checkReadable('text-embeddings', path.join(dir, 'missing.safetensors'))).toThrow(/^--text-embeddings: cannot read .*missing\.safetensors \(no such file or directory\)$/);
    expect(() => checkReadable('init-noise', dir)).toThrow(/--init-noise: cannot read .* \(is a directory\)/);
    const file = path.join(dir, 'a-file');
    fs.writeFileSync(file, 'x');
    expect(() => checkWritable('out', path.join(file, 'x.mp4'))).toThrow(/^--out: cannot write .*a-file \(a parent is not a directory\)$/);
    expect(() => checkWritable('out', dir)).toThrow(/--out: .* is a directory/);
    expect(() => checkWritable('out', path.join(dir, 'new/sub/x.mp4'))).not.toThrow();
  });

  it('prints one line and exits 2 for an unreachable --url, a missing embeddings file and an unwritable --out', async () => {
    // A port that was free a moment ago: nothing listens there.
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    fs.writeFileSync(path.join(dir, 'plain'), 'x');
    const cases: [string[], RegExp][] = [
      [['render', '--url', `http://127.0.0.1:${port}`, '--prompt', 'x'], new RegExp(`^longshot: cannot reach the controller at http://127\\.0\\.0\\.1:${port}`)],
      [['status', '--url', `http://127.0.0.1:${port}`, 'job-1'], /^longshot: cannot reach the controller at/],
      [['render', '--prompt', 'x', '--text-embeddings', 'missing.safetensors'], /^longshot: --text-embeddings: cannot read .*missing\.safetensors \(no such file or directory\)$/],
      [['render', '--prompt', 'x', '--out', 'plain/x.mp4'], /^longshot: --out: cannot write .*plain \(a parent is not a directory\)$/],
      [['render', '--prompt', 'x', '--frames', '50'], /^longshot: --frames: must be 4n\+1 .* try 45 or 61$/],
      [['submit', '--prompt', 'x'], /^longshot: --url: required/],
      [['model', 'frob'], /^longshot: model: unknown sub-command 'frob'/],
    ];
    for (const [args, re] of cases) {
      const r = await longshot(args);
      expect(r.code, args.join(' ')).toBe(2);
      const lines = r.stderr.trim().split('\n');
      expect(lines, args.join(' ')).toHaveLength(1);
      expect(lines[0], args.join(' ')).toMatch(re);
      expect(r.stderr).not.toMatch(/\n\s+at /);
    }
  });
});
