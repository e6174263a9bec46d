/**
 * Screenshots of the web console for docs/console.md: `npm run console:screenshots` starts a local
 * cluster and headless Chromium (test/e2e/console.ts), goes through the pages as the end-to-end test
 * does, and writes 1000x700 PNGs to docs/console/ (or the directory given as the first argument).
 * Not run by the tests: they leave the checkout as they found it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fillSubmitForm, launchChromium, LONG_JOB, openConsole, SHORT_JOB, startConsoleCluster, submitForm, videoState, waitForStatus } from './console';
import { waitFor } from './http';

/** The screenshots show the model trained here drawing (the tests use the seeded tiny model, which draws noise). */
const SHAPES = { prompt: 'a big red circle bouncing on a blue background', model: 'longshot-shapes', block: '4', context: '2' };
const SHOT_SHORT_JOB = { ...SHORT_JOB, ...SHAPES, frames: '61', steps: '20' };
/** 40 blocks of 40 steps, as LONG_JOB: long enough to be caught running. */
const SHOT_LONG_JOB = { ...LONG_JOB, ...SHAPES, frames: '637', steps: '40' };

async function main(outDir: string): Promise<void> {
  fs.mkdirSync(outDir, { recursive: true });
  const c = await startConsoleCluster();
  const browser = await launchChromium();
  try {
    const { page, problems } = await openConsole(browser, c.url, c.apiKey);
    const shot = async (name: string) => {
      await page.screenshot({ path: path.join(outDir, `${name}.png`) });
      process.stdout.write(`${path.join(outDir, `${name}.png`)}\n`);
    };

    await fillSubmitForm(page, c.url, SHOT_SHORT_JOB);
    await page.locator('header').scrollIntoViewIfNeeded();
    await shot('submit');

    await fillSubmitForm(page, c.url, { ...SHOT_SHORT_JOB, steps: 'four' });
    await page.click('#submit-button');
    await page.waitForSelector('.field[data-field="steps"].invalid');
    await page.locator('.field[data-field="steps"]').scrollIntoViewIfNeeded();
    await shot('submit-error');

    await fillSubmitForm(page, c.url, SHOT_SHORT_JOB);
    await submitForm(page);
    await waitForStatus(page, 'succeeded');
    await waitFor('the video to play', async () => (await videoState(page)).currentTime > 0);
    await shot('job-done');

    await fillSubmitForm(page, c.url, SHOT_LONG_JOB);
    const long = await submitForm(page);
    await waitFor('two stitched blocks', async () => (await page.locator('#job-blocks img').count()) >= 2);
    await shot('job-running');
    await page.goto(`${c.url}/#/jobs`);
    await page.waitForSelector(`#queue a[href="#/jobs/${long}"]`);
    await shot('jobs');
    await page.goto(`${c.url}/#/workers`);
    await page.waitForSelector(`#workers a[href="#/jobs/${long}"]`);
    await shot('workers');

    await page.goto(`${c.url}/#/jobs/${long}`);
    await waitForStatus(page, 'running');
    await page.click('#job-cancel');
    await waitForStatus(page, 'canceled');
    if (problems.length !== 1) throw new Error(`unexpected browser problems: ${problems.join('; ')}`);
  } finally {
    await browser.close();
    await c.stop();
  }
}

main(path.resolve(process.argv[2] ?? path.join(__dirname, '../../docs/console'))).catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exit(1);
});
