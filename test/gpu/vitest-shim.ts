/**
 * The part of vitest's API the CUDA suites use (describe, it, each, skipIf, expect and the matchers
 * they call), for running those suites where vitest is not installed: a GPU machine with Node but
 * no node_modules (deploy/gpu-node-pack.sh bundles a suite with this module in vitest's place).
 * Tests run one after another, in the order they were declared; `runDeclaredTests` runs them and
 * prints a line per test and a JSON summary.
 */
import { isDeepStrictEqual } from 'node:util';

type TestFn = () => unknown;
interface Declared {
  name: string;
  fn: TestFn | null; // null: skipped
}

const declared: Declared[] = [];
const prefix: string[] = [];

const format = (template: string, arg: unknown, index: number): string =>
  template
    .replace(/\$(\w+)/g, (_m, key: string) => String((arg as Record<string, unknown>)?.[key]))
    .replace(/%[sid]/g, () => String(arg))
    .replace(/%#/g, String(index));

const declare = (name: string, fn: TestFn | null): void => void declared.push({ name: [...prefix, name].join(' > '), fn });

export function describe(name: string, fn: () => void): void {
  prefix.push(name);
  try {
    fn();
  } finally {
    prefix.pop();
  }
}
describe.each =
  <T>(cases: readonly T[]) =>
  (name: string, fn: (c: T) => void): void =>
    cases.forEach((c, i) => describe(format(name, c, i), () => fn(c)));

function itWith(skip: boolean) {
  const one = (name: string, fn: TestFn): void => declare(name, skip ? null : fn);
  return Object.assign(one, {
    each:
      <T>(cases: readonly T[]) =>
      (name: string, fn: (c: T) => unknown): void =>
        cases.forEach((c, i) => declare(format(name, c, i), skip ? null : () => fn(c))),
  });
}
export const it = Object.assign(itWith(false), { skipIf: (cond: boolean) => itWith(cond) });
export const test = it;

class AssertionError extends Error {}

function fail(message: string | undefined, what: string): never {
  throw new AssertionError(message ? `${message}: ${what}` : what);
}

const show = (v: unknown): string => {
  try {
    return typeof v === 'string' ? JSON.stringify(v) : String(JSON.stringify(v) ?? v).slice(0, 200);
  } catch {
    return String(v);
  }
};

function thrownMatches(err: unknown, expected?: string | RegExp): boolean {
  if (expected === undefined) return true;
  const message = err instanceof Error ? err.message : String(err);
  return typeof expected === 'string' ? message.includes(expected) : expected.test(message);
}

export function expect(actual: unknown, message?: string) {
  const matchers = {
    toBe: (want: unknown) => void (Object.is(actual, want) || fail(message, `expected ${show(actual)} to be ${show(want)}`)),
    toEqual: (want: unknown) => void (isDeepStrictEqual(actual, want) || fail(message, `expected ${show(actual)} to equal ${show(want)}`)),
    toBeTruthy: () => void (actual || fail(message, `expected ${show(actual)} to be truthy`)),
    toBeGreaterThan: (n: number) => void ((actual as number) > n || fail(message, `expected ${show(actual)} > ${n}`)),
    toBeGreaterThanOrEqual: (n: number) => void ((actual as number) >= n || fail(message, `expected ${show(actual)} >= ${n}`)),
    toBeLessThanOrEqual: (n: number) => void ((actual as number) <= n || fail(message, `expected ${show(actual)} <= ${n}`)),
    toThrow: (expected?: string | RegExp) => {
      try {
        (actual as () => unknown)();
      } catch (err) {
        if (!thrownMatches(err, expected)) fail(message, `threw ${String(err)}, expected ${String(expected)}`);
        return;
      }
      fail(message, 'expected a throw');
    },
  };
  return Object.assign(matchers, {
    rejects: {
      toThrow: async (expected?: string | RegExp): Promise<void> => {
        try {
          await (actual as Promise<unknown>);
        } catch (err) {
          if (!thrownMatches(err, expected)) fail(message, `rejected with ${String(err)}, expected ${String(expected)}`);
          return;
        }
        fail(message, 'expected a rejection');
      },
    },
  });
}

/** Runs every declared test in order; resolves with the summary (also printed as one JSON line). */
export async function runDeclaredTests(suite: string): Promise<{ passed: number; failed: number; skipped: number }> {
  const summary = { suite, passed: 0, failed: 0, skipped: 0, failures: [] as string[], seconds: 0 };
  const start = Date.now();
  for (const t of declared) {
    if (!t.fn) {
      summary.skipped++;
      console.error(`  - ${t.name}`);
      continue;
    }
    try {
      await t.fn();
      summary.passed++;
      console.error(`  ✓ ${t.name}`);
    } catch (err) {
      summary.failed++;
      summary.failures.push(`${t.name}: ${err instanceof Error ? err.message : String(err)}`);
      console.error(`  × ${t.name}\n    ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  summary.seconds = (Date.now() - start) / 1000;
  console.log(JSON.stringify(summary));
  return summary;
}
