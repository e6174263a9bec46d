import { execFile } from 'node:child_process';
import * as path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
export const LONGSHOT_BIN = path.resolve(__dirname, '../../apps/cli/bin/longshot.js');

export interface CliResult {
  readonly stdout: string;
  readonly stderr: string;
  /** Exit status (0 on success). */
  readonly code: number;
}

/** Runs the `longshot` command as a user would, in `cwd`, and returns its output and status. */
export function longshot(args: readonly string[], cwd: string): Promise<CliResult> {
  return runNode([LONGSHOT_BIN, ...args], cwd);
}

/** Runs `node ARGS` (a script and its flags; `--import tsx` first for a TypeScript entry point) in `cwd`. */
export async function runNode(args: readonly string[], cwd: string): Promise<CliResult> {
  try {
    return { ...(await run(process.execPath, args, { cwd, maxBuffer: 16 << 20 })), code: 0 };
  } catch (e) {
    const err = e as { stdout: string; stderr: string; code: number };
    return { stdout: err.stdout, stderr: err.stderr, code: err.code };
  }
}
