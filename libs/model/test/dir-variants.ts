import * as fs from 'node:fs';
import * as path from 'node:path';
import { expect } from 'vitest';
import { openPipelineDir } from '../src/pipeline-dir';

/** Copies of a seeded pipeline directory under `root`, each with one edit applied (for refusal tests). */
export function dirVariants(root: string): (from: string, edit: (dir: string) => void) => string {
  let copies = 0;
  return (from, edit) => {
    const dir = path.join(root, `v${copies++}`);
    fs.cpSync(from, dir, { recursive: true });
    edit(dir);
    return dir;
  };
}

/** Rewrites one JSON file of a directory in place. */
export function editJson(dir: string, rel: string, change: (j: Record<string, unknown>) => void): void {
  const file = path.join(dir, rel);
  const j = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
  change(j);
  fs.writeFileSync(file, JSON.stringify(j));
}

/** The error message of opening `dir`, checked never to reveal `hidden` (where the directory lives). */
export function openRefusal(dir: string, hidden: string): string {
  try {
    openPipelineDir(dir);
  } catch (e) {
    const message = (e as Error).message;
    expect(message).not.toContain(hidden);
    return message;
  }
  throw new Error(`${path.basename(dir)} was accepted`);
}
