import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import { parseApiKey } from '@longshot/cache';
import { QUEUE_BOARD_PATH } from '../../apps/controller/src/http/queue-board';
import { attributes, callerShown, fetchStatus, fillSubmitForm, isUnauthorized, launchChromium, LONG_JOB, openConsole, properties, SHORT_JOB, signInThroughForm, startConsoleCluster, submitForm, videoState, waitForStatus, type ConsoleCluster } from './console';
import { waitFor } from './http';

/*
 * The web console (docs/console.md) in headless Chromium against a real cluster: Redis, a
 * controller, two tiny-model workers. Every step goes through the pages as a person would.
 */

let c: ConsoleCluster;
let browser: Browser;
let page: Page;
let problems: string[];

beforeAll(async () => {
  [c, browser] = await Promise.all([startConsoleCluster(), launchChromium()]);
  ({ page, problems } = await openConsole(browser, c.url, c.apiKey));
});

afterAll(async () => {
  await browser?.close();
  await c?.stop();
});

const shown = (selector: string, timeoutMs = 30_000) => page.waitForSelector(selector, { timeout: timeoutMs });

describe('web console', () => {
  it('is served at / and /console/* with its content types and a strict CSP, outside the OpenAPI document', async () => {
    const index = await c.request('GET', '/');
    expect(index.status).toBe(200);
    expect(index.headers.get('content-type')).toBe('text/html; charset=utf-8');
    const csp = index.headers.get('content-security-policy') ?? '';
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).not.toContain('unsafe-inline');
    expect(index.headers.get('x-content-type-options')).toBe('nosniff');
    // Scripts are files of this origin, never inline.
    for (const tag of index.text.match(/<script[^>]*>/g) ?? []) expect(tag).toMatch(/src="\/console\/[a-z-]+\.js"/);
    for (const [file, type] of [['app.js', 'text/javascript; charset=utf-8'], ['console.css', 'text/css; charset=utf-8'], ['favicon.svg', 'image/svg+xml']]) {
      const r = await c.request('GET', `/console/${file}`);
      expect(r.status, file).toBe(200);
      expect(r.headers.get('content-type'), file).toBe(type);
      expect(r.headers.get('content-security-policy'), file).toBe(csp);
    }
    for (const route of ['/console/nope.js', '/console/..%2Fsrc%2Fmain.ts', '/console/__proto__']) {
      const r = await c.request('GET', route);
      expect(r.status, route).toBe(404);
      expect(r.json, route).toEqual({ error: 'not_found', message: 'no such console file' });
    }
    const doc = (await c.request('GET', '/docs-json')).json;
    expect(Object.keys(doc.paths).filter((p) => p === '/' || p.startsWith('/console'))).toEqual([]);
  });

  it("builds the form from the OpenAPI body schema and shows the API's 400 at the field it names, submitting nothing", async () => {
    await fillSubmitForm(page, c.url, { ...SHORT_JOB, steps: 'four' });
    const schema = (await c.request('GET', '/docs-json')).json.paths['/v1/videos'].post.requestBody.content['application/json'].schema;
    expect(await attributes(page, '#submit-form .field', 'data-field')).toEqual([...Object.keys(schema.properties), 'Idempotency-Key']);
    expect(await page.locator('#submit-form select[name="sampler"] option').allTextContents()).toEqual(['(default)', ...schema.properties.sampler.enum]);

    await page.click('#submit-button');
    await shown('.field[data-field="steps"].invalid');
    // The very message the API answers for that body.
    const direct = await c.request('POST', '/v1/videos', { body: { steps: 'four' } });
    expect(direct.status).toBe(400);
    expect(direct.json.field).toBe('steps');
    expect(await page.locator('#submit-error').textContent()).toBe(direct.json.message);
    expect(await page.locator('.field[data-field="steps"] .field-error').textContent()).toBe(direct.json.message);
    expect(page.url()).toMatch(/#\/submit$/);
    expect((await c.request('GET', '/v1/videos')).json.items).toEqual([]);
  });

  it('submits a short job, follows it to done over SSE with every block preview, and plays the video', async () => {
    // CFG parallel from the form's boolean select: the job runs on both workers, one guidance half each.
    await fillSubmitForm(page, c.url, { ...SHORT_JOB, cfgParallel: 'true' });
    const id = await submitForm(page);
    await waitForStatus(page, 'succeeded');
    expect(await page.locator('#job-phase').textContent()).toMatch(/^Done: 21 frames at 16 fps, rendered in .+ on K=1 x CFG\.$/);
    expect(await page.locator('dl.spec').textContent()).toContain('cfgParalleltrue');
    // Progress reached the end: 3 blocks of 4 steps.
    await waitFor('the final progress', async () => (await page.locator('#job-counts').textContent()) === '3/3 blocks, 12/12 block-steps');
    expect(await properties(page, '#job-progress', ['value', 'max'])).toEqual([{ value: 12, max: 12 }]);
    expect(await properties(page, '#job-stitched', ['value', 'max'])).toEqual([{ value: 3, max: 3 }]);
    expect(await page.locator('#job-eta').textContent()).toMatch(/^ETA /);
    expect(await page.locator('#job-cancel').isDisabled()).toBe(true);
    // One tile per block, each stitched, each preview decoded by the browser.
    await waitFor('every preview to load', async () => {
      const previews = await properties(page, '#job-blocks img', ['complete', 'naturalWidth']);
      return previews.length === 3 && previews.every((p) => p.complete && p.naturalWidth === 64);
    });
    expect(await attributes(page, '#job-blocks .block', 'data-state')).toEqual(['stitched', 'stitched', 'stitched']);
    // The MP4 plays: decoded (readyState >= 2), 21 frames at 16 fps, and time moves on.
    const first = await waitFor('the video to be decodable', async () => {
      const v = await videoState(page);
      expect(v.error).toBeNull();
      return v.readyState >= 2 && v.duration > 0 ? v : null;
    });
    expect(first.width).toBe(64);
    expect(first.duration).toBeCloseTo(21 / 16, 1);
    await waitFor('the video to play', async () => (await videoState(page)).currentTime > 0);
    // The jobs page lists it among the recent jobs; its page, visited afresh, shows the result.
    await page.goto(`${c.url}/#/jobs`);
    await page.click(`#recent a[href="#/jobs/${id}"]`);
    await waitForStatus(page, 'succeeded');
    await waitFor('the video again', async () => (await videoState(page)).readyState >= 2);
    expect(await attributes(page, '#job-blocks img', 'src')).toEqual([0, 1, 2].map((i) => `/v1/videos/${id}/blocks/${i}/preview.jpg`));
  });

  it('shows a long job running in the queue and its workers leased, then cancels it from its page', async () => {
    await fillSubmitForm(page, c.url, LONG_JOB);
    const id = await submitForm(page);
    await waitForStatus(page, 'running');
    await shown('#job-blocks .block');

    await page.goto(`${c.url}/#/jobs`);
    await shown(`#queue a[href="#/jobs/${id}"]`);
    await page.goto(`${c.url}/#/workers`);
    await shown(`#workers a[href="#/jobs/${id}"]`);

    await page.goto(`${c.url}/#/jobs/${id}`);
    await waitForStatus(page, 'running');
    await page.click('#job-cancel');
    await waitForStatus(page, 'canceled');
    expect(await page.locator('#job-phase').textContent()).toBe('Canceled.');
    expect((await c.request('GET', `/v1/videos/${id}`)).json.status).toBe('canceled');
    // Its workers are released, and the workers page says so.
    await page.goto(`${c.url}/#/workers`);
    await waitFor('every worker to show free', async () => {
      const states = await attributes(page, '#workers [data-status]', 'data-status');
      return states.length === 2 && states.every((s) => s === 'free');
    });
  });

  it('names the operator in the header, with Sign out and the operators\' links (Workers, API, Queues to the board)', async () => {
    expect(await callerShown(page)).toEqual({ tenant: 'local', role: 'operator', operatorLinks: true, signOut: true });
    expect(await page.locator('#nav-queues').getAttribute('href')).toBe(QUEUE_BOARD_PATH);
    // The link opens the board with the page's session cookie (the board itself: queue-board.test.ts).
    expect(await fetchStatus(page, QUEUE_BOARD_PATH)).toBe(200);
    // What the header is drawn from: GET /v1/session names the key by its id, never its secret.
    const { id, secret } = parseApiKey(c.apiKey)!;
    const me = await c.request('GET', '/v1/session');
    expect(me.json).toEqual({ tenant: 'local', role: 'operator', keyId: id });
    expect(me.text).not.toContain(secret);
  });

  it('shows a tenant key its tenant without the operators\' links; Sign out ends the session and asks for a key again', async () => {
    const key = await c.cluster.createApiKey({ tenant: 'red', role: 'tenant' });
    const tenant = await openConsole(browser, c.url, key);
    const p = tenant.page;
    try {
      expect(await callerShown(p)).toEqual({ tenant: 'red', role: 'tenant', operatorLinks: false, signOut: true });
      expect(await fetchStatus(p, '/v1/videos')).toBe(200);

      await p.click('#signout');
      await p.waitForSelector('#signin-form');
      expect(await p.locator('#caller').isHidden()).toBe(true);
      expect(await p.context().cookies()).toEqual([]);
      expect(await fetchStatus(p, '/v1/videos')).toBe(401);
      // The signed-out page got 401s (the view asking again, the fetch above) and nothing else.
      expect(tenant.problems).toContain('401 GET /v1/videos');
      expect(tenant.problems.filter((x) => !isUnauthorized(x))).toEqual([]);

      // The form signs in again, and the header follows.
      await signInThroughForm(p, key);
      expect(await callerShown(p)).toEqual({ tenant: 'red', role: 'tenant', operatorLinks: false, signOut: true });
    } finally {
      await p.context().close();
    }
  });

  it('made no request to another origin, logged no error (no CSP violation), and got no error answer but the bad field', () => {
    expect(problems).toEqual(['400 POST /v1/videos']);
  });
});
