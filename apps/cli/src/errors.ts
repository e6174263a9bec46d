import * as fs from 'node:fs';
import * as path from 'node:path';
import { UsageError } from './args';

/**
 * How `longshot` ends on an error. A user's mistake (UsageError: a flag, a file, a job id, an
 * unreachable --url) is one line, exit status 2. Anything else is a bug or an operational failure:
 * one line and exit status 1, with the stack only when LONGSHOT_DEBUG=1.
 */
export function reportError(e: unknown, debug = process.env.LONGSHOT_DEBUG === '1'): { message: string; exitCode: number } {
  if (e instanceof UsageError) return { message: `longshot: ${oneLine(e.message)}`, exitCode: 2 };
  const message = e instanceof Error ? e.message : String(e);
  if (debug && e instanceof Error && e.stack) return { message: `longshot: ${e.stack}`, exitCode: 1 };
  return { message: `longshot: ${oneLine(message)}${debug ? '' : ' (LONGSHOT_DEBUG=1 shows where)'}`, exitCode: 1 };
}

/** The first line of a message; a UsageError is meant to be read at a glance. */
function oneLine(message: string): string {
  return message.split('\n')[0].trim();
}

const REASONS: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  EISDIR: 'is a directory',
  ENOTDIR: 'a parent is not a directory',
  EEXIST: 'a parent is not a directory',
  EROFS: 'read-only file system',
  ENOSPC: 'no space left on device',
};

/** 'no such file or directory' for an errno error, else its message. */
export function errnoReason(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return (code && REASONS[code]) ?? (e as Error).message;
}

/** Checks before any cluster starts that `file` (given with --flag) can be read. */
export function checkReadable(flag: string, file: string): void {
  try {
    const st = fs.statSync(file);
    if (st.isDirectory()) throw Object.assign(new Error('is a directory'), { code: 'EISDIR' });
    fs.accessSync(file, fs.constants.R_OK);
  } catch (e) {
    throw new UsageError(`--${flag}: cannot read ${file} (${errnoReason(e)})`);
  }
}

/**
 * Checks before any cluster starts that the output file `file` (given with --flag) can be
 * written: its directory exists or can be made, is writable, and `file` is not a directory.
 */
export function checkWritable(flag: string, file: string): void {
  const dir = path.dirname(file);
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.accessSync(dir, fs.constants.W_OK);
  } catch (e) {
    throw new UsageError(`--${flag}: cannot write ${dir} (${errnoReason(e)})`);
  }
  if (fs.statSync(file, { throwIfNoEntry: false })?.isDirectory()) throw new UsageError(`--${flag}: ${file} is a directory; give a file name`);
}

/** Runs `fn`; an error it throws becomes a one-line UsageError naming `--flag`. */
export function flagged<T>(flag: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw new UsageError(`--${flag}: ${(e as Error).message}`);
  }
}

export async function flaggedAsync<T>(flag: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw new UsageError(`--${flag}: ${(e as Error).message}`);
  }
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNRESET', 'ETIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_SOCKET']);

/** fetch's "fetch failed" for a controller that is not there, as a one-line user error; else null. */
export function unreachable(e: unknown, url: string): UsageError | null {
  if (!(e instanceof TypeError) || !/fetch failed/.test(e.message)) return null;
  const cause = e.cause as (Error & { code?: string; errors?: { code?: string }[] }) | undefined;
  const code = cause?.code ?? cause?.errors?.[0]?.code;
  if (code && !UNREACHABLE.has(code)) return null;
  return new UsageError(`cannot reach the controller at ${url}${code ? ` (${code})` : ''}; is \`longshot up\` running there? (--url or LONGSHOT_URL)`);
}
