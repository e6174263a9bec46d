import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ControllerClient } from '../src/client';

/**
 * `longshot up` and `longshot render` with real processes: whatever ends the CLI (SIGKILL
 * included), no redis-server, controller, worker or helper it started survives it.
 */
const bin = path.resolve(__dirname, '../bin/longshot.js');
let dir: string;
const started: ChildProcess[] = [];

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-lifecycle-'));
});
afterAll(() => {
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
});

interface Cli {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function cli(args: string[]): Cli {
  const child = spawn(process.execPath, [bin, ...args], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, REDIS_URL: '' } });
  started.push(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return { child, stdout: () => out, stderr: () => err, exit };
}

/** Polls `check` until it is true; fails with `what` after `limitMs` (a guard, not a timing). */
async function until(what: string, check: () => boolean, limitMs = 90_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A process that is running (a zombie waiting for its reaper counts as gone). */
function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

/** Every process below `root`, from /proc (children, their children, ...). */
function descendants(root: number): { pid: number; comm: string }[] {
  const parent = new Map<number, number>();
  const comm = new Map<number, string>();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const close = stat.lastIndexOf(')');
      comm.set(Number(entry), stat.slice(stat.indexOf('(') + 1, close));
      parent.set(Number(entry), Number(stat.slice(close + 2).split(' ')[1]));
    } catch {
      // gone meanwhile
    }
  }
  const found: { pid: number; comm: string }[] = [];
  const queue = [root];
  while (queue.length) {
    const p = queue.shift()!;
    for (const [pid, ppid] of parent) if (ppid === p) found.push({ pid, comm: comm.get(pid)! }), queue.push(pid);
  }
  return found;
}

async function noSurvivors(pids: { pid: number; comm: string }[]): Promise<void> {
  await until(`${pids.map((p) => `${p.comm}:${p.pid}`).join(' ')} to exit`, () => pids.every((p) => !alive(p.pid)), 30_000);
}

/** `longshot up` ready: the controller's URL, the operator key and the processes it printed. */
async function upReady(up: Cli): Promise<{ url: string; apiKey: string; pids: number[] }> {
  await until('longshot up to be ready', () => /processes \(pids\): [\d ]+\n/.test(up.stdout()) || up.child.exitCode !== null);
  expect(up.child.exitCode, up.stderr()).toBeNull();
  const url = /controller (http:\/\/\S+)/.exec(up.stdout())![1];
  const apiKey = /operator API key: (lsk_\S+) /.exec(up.stdout())![1];
  const pids = /processes \(pids\): ([\d ]+)\n/.exec(up.stdout())![1].trim().split(' ').map(Number);
  return { url, apiKey, pids };
}

describe('children die with the CLI', () => {
  it('leaves no redis-server, controller or worker when `up` is SIGKILLed', async () => {
    const up = cli(['up', '--workers', '2', '--port', '0']);
    const { pids } = await upReady(up);
    const tree = descendants(up.child.pid!);
    // redis-server, the controller, 2 workers (and whatever helpers they run).
    expect(pids).toHaveLength(4);
    for (const pid of pids) expect(tree.map((p) => p.pid), `${pid} below the CLI`).toContain(pid);
    expect(tree.map((p) => p.comm)).toContain('redis-server');
    up.child.kill('SIGKILL');
    expect((await up.exit).signal).toBe('SIGKILL');
    await noSurvivors(tree);
  });

  it('`up` logs a job from queued to succeeded, and stops everything on SIGINT with status 130', async () => {
    const up = cli(['up', '--workers', '1', '--port', '0']);
    const { url, apiKey } = await upReady(up);
    const tree = descendants(up.child.pid!);
    // Auth is on: without the printed key the controller refuses; with it, the job runs.
    await expect(new ControllerClient(url).submit({ prompt: 'x' })).rejects.toMatchObject({ status: 401 });
    const job = await new ControllerClient(url, apiKey).submit({ prompt: 'a lighthouse', frames: 13, width: 32, height: 32, steps: 2, block: 4, context: 0 });
    await until('the job to succeed in the log', () => new RegExp(`job ${job.id} succeeded`).test(up.stdout()) || /job \S+ failed/.test(up.stdout()));
    const log = up.stdout().split('\n').filter((l) => l.includes(job.id));
    expect(log.map((l) => /job \S+ (\w+)/.exec(l)![1])).toEqual(expect.arrayContaining(['queued', 'running', 'succeeded']));
    expect(log.findIndex((l) => / running: /.test(l))).toBeLessThan(log.findIndex((l) => / succeeded/.test(l)));
    up.child.kill('SIGINT');
    expect(await up.exit).toEqual({ code: 130, signal: null });
    expect(up.stdout()).toMatch(/stopping\.\.\.\nstopped\n$/);
    await noSurvivors(tree);
  });

  it('`render` stops its embedded cluster on SIGTERM and exits with status 143', async () => {
    const render = cli(['render', '--prompt', 'a long night', '--seconds', '30', '--size', '64x64', '--steps', '50', '--out', 'never.mp4']);
    await until('the render to start denoising', () => /denoising|loading weights/.test(render.stderr()) || render.child.exitCode !== null);
    const tree = descendants(render.child.pid!);
    expect(tree.map((p) => p.comm)).toContain('redis-server');
    expect(tree.filter((p) => p.comm.startsWith('node')).length).toBeGreaterThanOrEqual(3);
    render.child.kill('SIGTERM');
    expect(await render.exit).toEqual({ code: 143, signal: null });
    expect(render.stderr()).toMatch(/SIGTERM: stopping/);
    await noSurvivors(tree);
    expect(fs.existsSync(path.join(dir, 'never.mp4'))).toBe(false);
  });
});
