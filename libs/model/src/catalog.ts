import * as fs from 'node:fs';
import * as path from 'node:path';
import { MODEL_CONFIGS } from './config';
import { resolveModel, SHIPPED_PIPELINES, type ModelSource } from './source';

/**
 * A model name a client may send: letters, digits, '.', '_', '-', starting with a letter or
 * digit. No '/', so never a path, and never '.' or '..'.
 */
export const MODEL_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$';
const MODEL_NAME = new RegExp(MODEL_NAME_PATTERN);

/** A name the catalog refuses. The message is safe to show a client: no server path, no file bytes, no size. */
export class ModelNameError extends Error {}

/** How a refused name is echoed: the client's own text, bounded. */
const echo = (name: string): string => JSON.stringify(name.length > 64 ? `${name.slice(0, 64)}...` : name);

/**
 * The models a service serves, by name: the seeded built-ins (tiny, small, wan2.1-*), the pipelines
 * shipped in the repository (longshot-shapes) and the
 * entries of one models directory the operator configures (`--models-dir`): a diffusers pipeline
 * directory, or a transformer-only `.safetensors` file, each named by its entry name. A client
 * names a model and never a path; the controller and every worker resolve names through this
 * one class. An entry is taken only as what lstat says it is: a real directory or a regular file
 * directly inside the models directory; a symbolic link, FIFO, socket or device is refused
 * without being opened (so a FIFO can never block the process).
 */
export class ModelCatalog {
  /** Absolute models directory, or null when only the built-in names are served. */
  readonly dir: string | null;

  constructor(dir: string | null) {
    this.dir = dir === null ? null : path.resolve(dir);
  }

  /** Built-in names and the directory's entries it would serve: real directories and regular .safetensors files. */
  names(): string[] {
    const dir = this.dir;
    const served = (n: string): boolean => {
      const st = dir === null || !MODEL_NAME.test(n) ? null : lstatOrNull(path.join(dir, n));
      return st !== null && (st.isDirectory() || (st.isFile() && n.endsWith('.safetensors')));
    };
    const entries = dir === null ? [] : safeReaddir(dir).filter(served);
    return [...Object.keys(MODEL_CONFIGS), ...Object.keys(SHIPPED_PIPELINES), ...entries.sort()];
  }

  /** The model a name stands for; throws ModelNameError with a message safe to show a client. */
  resolve(name: string): ModelSource {
    if (typeof name !== 'string' || !MODEL_NAME.test(name) || name === '.' || name === '..') {
      // Not echoed: it may be a path, and the answer says nothing about what exists there.
      throw new ModelNameError(`not a model name: a model is named (letters, digits, '.', '_', '-'), never a path; served: ${this.names().join(', ')}`);
    }
    const entry = this.dir === null ? null : lstatOrNull(path.join(this.dir, name));
    if (entry === null) {
      if (!Object.hasOwn(MODEL_CONFIGS, name) && !Object.hasOwn(SHIPPED_PIPELINES, name)) throw new ModelNameError(`unknown model ${echo(name)} (served: ${this.names().join(', ')})`);
      return resolveModel(name);
    }
    const p = path.join(this.dir!, name);
    if (entry.isSymbolicLink()) throw new ModelNameError(`model ${echo(name)} is a symbolic link in the models directory; only real directories and regular files are served`);
    if (!entry.isDirectory() && !(entry.isFile() && name.endsWith('.safetensors'))) {
      throw new ModelNameError(`model ${echo(name)} is neither a pipeline directory nor a regular .safetensors file`);
    }
    try {
      return { ...resolveModel(p), id: name };
    } catch (e) {
      // Errors of the model's own files name them relative to the models directory, never where it is.
      throw new ModelNameError(`model ${echo(name)}: ${(e as Error).message.split(this.dir!).join('<models>')}`);
    }
  }
}

/**
 * The value of a `--models-dir` flag: null when unset, else the absolute path of an existing
 * directory (checked once at start-up, so a typo fails the process, not every request).
 */
export function modelsDirFlag(raw: string | undefined): string | null {
  if (raw === undefined || raw === '') return null;
  const dir = path.resolve(raw);
  let ok = false;
  try {
    ok = fs.statSync(dir).isDirectory();
  } catch {
    // reported below
  }
  if (!ok) throw new Error(`--models-dir: ${JSON.stringify(raw)} is not a directory`);
  return dir;
}

function lstatOrNull(p: string): fs.Stats | null {
  try {
    return fs.lstatSync(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return null;
    throw new ModelNameError('the models directory cannot be read');
  }
}

function safeReaddir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}
