/**
 * The web console's browser harness, shared by test/e2e/console.test.ts and the screenshot script
 * (test/e2e/console-screenshots.ts): a local cluster (Redis, one controller, tiny-model workers),
 * Debian's headless Chromium driven by playwright-core, and the steps both take through the pages.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { LocalCluster } from '../../apps/cli/src/local-cluster';
import { request, waitFor, type HttpInit, type HttpResult } from './http';

/** Debian's chromium package; playwright-core never downloads a browser of its own. */
export const CHROMIUM = '/usr/bin/chromium';

/** A job that finishes in a few seconds on the tiny model: 3 blocks of 2 latent frames, 4 steps. */
export const SHORT_JOB = { prompt: 'a paper boat drifting down a rain-soaked street at dusk', size: '64x64', frames: '21', block: '2', context: '1', steps: '4', model: 'tiny', seed: '7' };

/** A job that runs long enough to be watched and canceled: 40 blocks of 40 steps. */
export const LONG_JOB = { prompt: 'a lighthouse in a storm, waves breaking', size: '64x64', frames: '317', block: '2', context: '1', steps: '40', model: 'tiny', seed: '9' };

export interface ConsoleCluster {
  readonly cluster: LocalCluster;
  /** The controller's base URL, http://127.0.0.1:PORT */
  readonly url: string;
  /** The cluster's operator key: the console signs in with it. */
  readonly apiKey: string;
  /** A request to the controller with the operator key as Authorization: Bearer. */
  request(method: string, route: string, init?: HttpInit): Promise<HttpResult>;
  stop(): Promise<void>;
}

export async function startConsoleCluster(workers = 2): Promise<ConsoleCluster> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-console-'));
  const cluster = await LocalCluster.start({
    workers,
    controllers: 1,
    name: 'console',
    controllerEnv: { LONGSHOT_RESULTS_DIR: path.join(dir, 'results'), LONGSHOT_WAIT_FOR_WORKERS_MS: '300' },
  });
  const url = [...cluster.controllers.values()][0].url;
  const apiKey = cluster.apiKey!;
  return {
    cluster,
    url,
    apiKey,
    request: (method, route, init = {}) => request(url, method, route, { ...init, headers: { authorization: `Bearer ${apiKey}`, ...init.headers } }),
    async stop() {
      await cluster.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Headless Chromium. As root (a container) Chromium refuses to start without --no-sandbox; a
 * normal user keeps the sandbox. Media may play without a user gesture (the video autoplays muted).
 */
export function launchChromium(): Promise<Browser> {
  const root = process.getuid?.() === 0;
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...(root ? ['--no-sandbox'] : []), '--disable-dev-shm-usage', '--autoplay-policy=no-user-gesture-required', '--mute-audio'],
  });
}

export interface ConsolePage {
  readonly page: Page;
  /**
   * Console errors (CSP violations among them), page errors, requests to any other origin, and
   * answers of 400 or more (`400 POST /v1/videos`; the browser also logs those as console errors).
   */
  readonly problems: string[];
}

/**
 * A 1000x700 page on the console that records what should never happen, signed in with `apiKey`
 * through the console's own form (the first page's 401 that shows the form is expected, so it is
 * not recorded).
 */
export async function openConsole(browser: Browser, url: string, apiKey: string): Promise<ConsolePage> {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  const problems: string[] = [];
  page.on('console', (m) => m.type() === 'error' && !m.text().startsWith('Failed to load resource') && problems.push(`console: ${m.text()}`));
  page.on('response', (r) => r.status() >= 400 && problems.push(`${r.status()} ${r.request().method()} ${new URL(r.url()).pathname}`));
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('request', (r) => !r.url().startsWith(`${url}/`) && problems.push(`request to another origin: ${r.url()}`));
  await page.goto(`${url}/#/submit`);
  await signInThroughForm(page, apiKey);
  problems.splice(0, problems.length, ...problems.filter((p) => !isUnauthorized(p)));
  return { page, problems };
}

/** Signs in on the sign-in form the page shows, and waits for the page it then shows (the header names the caller). */
export async function signInThroughForm(page: Page, apiKey: string): Promise<void> {
  await page.waitForSelector('#signin-form');
  await page.fill('#signin-form [name="key"]', apiKey);
  await page.click('#signin-button');
  await page.waitForSelector('#submit-form');
  await page.waitForSelector('#caller');
}

/** A recorded problem that is only the API's 401 of a page with no session (expected before sign-in and after sign-out). */
export const isUnauthorized = (problem: string): boolean => /^401 GET /.test(problem) || /status of 401/.test(problem);

/** The status of a fetch of `route` by the page itself, with its session cookie. */
export function fetchStatus(page: Page, route: string): Promise<number> {
  return page.evaluate((r: string) => fetch(r).then((res) => res.status), route);
}

/** The header's "signed in as": tenant and role, whether the Queues link and Sign out show. */
export async function callerShown(page: Page): Promise<{ tenant: string | null; role: string | null; operatorLinks: boolean; signOut: boolean }> {
  // Workers, API and Queues show together or not at all.
  const links = await Promise.all((await page.locator('nav .operator-only').all()).map((l) => l.isVisible()));
  if (links.length !== 3 || new Set(links).size !== 1) throw new Error(`operator links: expected Workers, API and Queues all shown or all hidden, got ${JSON.stringify(links)}`);
  return {
    tenant: await page.locator('#caller-tenant').textContent(),
    role: await page.locator('#caller-role').textContent(),
    operatorLinks: links[0],
    signOut: await page.locator('#signout').isVisible(),
  };
}

/** Opens the submit page and fills the form: text fields typed, enums selected. */
export async function fillSubmitForm(page: Page, url: string, fields: Record<string, string>): Promise<void> {
  await page.goto(`${url}/#/submit`);
  await page.waitForSelector('#submit-form');
  for (const [name, value] of Object.entries(fields)) {
    const control = page.locator(`#submit-form [name="${name}"]`);
    if ((await control.evaluate((el) => el.tagName)) === 'SELECT') await control.selectOption(value);
    else await control.fill(value);
  }
}

/** Submits the filled form and resolves with the job id once the job's page is shown. */
export async function submitForm(page: Page): Promise<string> {
  await page.click('#submit-button');
  await page.waitForURL(/#\/jobs\/[0-9a-f-]{36}$/, { timeout: 30_000 });
  await page.waitForSelector('#job-status [data-status]');
  return page.url().split('/').pop()!;
}

/** The status badge of the job page. */
export const jobStatus = (page: Page): Promise<string | null> => page.locator('#job-status [data-status]').getAttribute('data-status');

/** Waits until the job page shows `status` (the page follows the job's SSE stream). */
export function waitForStatus(page: Page, status: string, timeoutMs = 60_000): Promise<true> {
  return waitFor(`the job page to show ${status}`, async () => (await jobStatus(page)) === status, timeoutMs);
}

/*
 * Reads from the page. The project compiles without the DOM library, so the element types are
 * spelled as the few properties read.
 */

/** An attribute of each element `selector` matches, in document order. */
export function attributes(page: Page, selector: string, name: string): Promise<(string | null)[]> {
  return page.locator(selector).evaluateAll((els: { getAttribute(n: string): string | null }[], n: string) => els.map((e) => e.getAttribute(n)), name);
}

/** Properties of each element `selector` matches (e.g. a progress bar's value and max). */
export function properties(page: Page, selector: string, names: readonly string[]): Promise<Record<string, unknown>[]> {
  return page.locator(selector).evaluateAll((els: Record<string, unknown>[], ns: readonly string[]) => els.map((e) => Object.fromEntries(ns.map((n) => [n, e[n]]))), names);
}

interface VideoElement {
  readyState: number;
  duration: number;
  currentTime: number;
  videoWidth: number;
  error: { code: number } | null;
}

/** The <video> element's playback state. */
export function videoState(page: Page): Promise<{ readyState: number; duration: number; currentTime: number; error: number | null; width: number }> {
  return page.locator('#video').evaluate((v: VideoElement) => ({ readyState: v.readyState, duration: v.duration, currentTime: v.currentTime, error: v.error?.code ?? null, width: v.videoWidth }));
}
