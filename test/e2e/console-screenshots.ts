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

    await fillSubmitForm(page, c.url, SHORT_JOB);
    await page.locator('header').scrollIntoViewIfNeeded();
    await shot('submit');

    await fillSubmitForm(page, c.url, { ...SHORT_JOB, steps: 'four' });
    await page.click('#submit-button');
    await page.waitForSelector('.field[data-field="steps"].invalid');
    await page.locator('.field[data-field="steps"]').scrollIntoViewIfNeeded();
    await shot('submit-error');

    await fillSubmitForm(page, c.url, SHORT_JOB);
    await submitForm(page);
    await waitForStatus(page, 'succeeded');
    await waitFor('the video to play', async () => (await videoState(page)).currentTime > 0);
    await shot('job-done');

    await fillSubmitForm(page, c.url, LONG_JOB);
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
