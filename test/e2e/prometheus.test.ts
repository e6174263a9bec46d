import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { dump, load } from 'js-yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnTied } from '@longshot/cache';
import { LocalCluster } from '../../apps/cli/src/local-cluster';
import { request, waitFor } from './http';

/*
 * The shipped monitoring against a real cluster (issue 14 item 6): a real Prometheus (Debian's
 * `prometheus`, installed by deploy/bootstrap.sh) runs deploy/prometheus/prometheus.yml and
 * rules.yml, with 1 s intervals and this cluster's addresses, scraping the controller and, through
 * the controller's HTTP service discovery, the workers (real redis-server, controller, workers).
 * After one small job every Grafana panel query (deploy/grafana/longshot.json) and every
 * recording rule returns a series; after a worker is SIGKILLed, LongshotWorkerDown fires.
 */

type Obj = Record<string, any>;

const ROOT = path.resolve(__dirname, '../..');
const SD_PATH = '/v1/workers/prometheus-sd';

let dir: string;
let cluster: LocalCluster;
let prometheus: Prometheus;
let controllerUrl: string;
let operator: Record<string, string>;

interface Prometheus {
  readonly url: string;
  /** Instant query: the result vector's series. */
  query(expr: string): Promise<Obj[]>;
  stop(): Promise<void>;
}

/** Starts `prometheus` on `configFile` on a kernel-chosen loopback port, read back from its log. */
async function startPrometheus(configFile: string, dataDir: string): Promise<Prometheus> {
  const child: ChildProcess = spawnTied('prometheus', [`--config.file=${configFile}`, `--storage.tsdb.path=${dataDir}`, '--web.listen-address=127.0.0.1:0'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const address = await new Promise<string>((resolve, reject) => {
    child.once('error', (e) => reject(new Error(`prometheus could not start (${e.message}): install the Debian package \`prometheus\` (bash deploy/bootstrap.sh)`)));
    child.stderr!.on('data', (d: Buffer) => {
      log = (log + d.toString()).slice(-8000);
      const m = /msg="Listening on" address=(127\.0\.0\.1:\d+)/.exec(log);
      if (m) resolve(m[1]);
    });
    void exited.then(() => reject(new Error(`prometheus exited before listening: ${log}`)));
  });
  const url = `http://${address}`;
  await waitFor('prometheus to be ready', async () => (await fetch(`${url}/-/ready`).catch(() => null))?.ok);
  return {
    url,
    async query(expr) {
      const r = await request(url, 'GET', `/api/v1/query?query=${encodeURIComponent(expr)}`);
      if (r.json?.status !== 'success') throw new Error(`query ${expr}: ${r.text}`);
      return r.json.data.result as Obj[];
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

/** The shipped config, scraping this cluster every second and discovering its workers every second, with this cluster's operator key. */
function testConfig(controller: URL, rulesFile: string, keyFile: string): Obj {
  const config = load(fs.readFileSync(path.join(ROOT, 'deploy/prometheus/prometheus.yml'), 'utf8')) as Obj;
  config.global = { ...config.global, scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' };
  config.rule_files = [rulesFile];
  // Every controller endpoint it reads is operator-only: the shipped file must send a key there.
  const withKey = (o: Obj): void => {
    expect(o.authorization?.type).toBe('Bearer');
    o.authorization.credentials_file = keyFile;
  };
  for (const job of config.scrape_configs as Obj[]) {
    for (const s of job.static_configs ?? []) s.targets = [controller.host];
    if (job.static_configs) withKey(job);
    for (const sd of job.http_sd_configs ?? []) {
      expect(new URL(sd.url).pathname).toBe(SD_PATH);
      sd.url = `${controller.origin}${SD_PATH}`;
      sd.refresh_interval = '1s';
      withKey(sd);
    }
  }
  return config;
}

/** The shipped rules, evaluated every second, LongshotWorkerDown after 1 s instead of minutes. */
function testRules(): Obj {
  const rules = load(fs.readFileSync(path.join(ROOT, 'deploy/prometheus/rules.yml'), 'utf8')) as Obj;
  for (const group of rules.groups as Obj[]) {
    group.interval = '1s';
    for (const r of group.rules as Obj[]) if (r.alert === 'LongshotWorkerDown') r.for = '1s';
  }
  return rules;
}

/** Every query of the dashboard (panels, nested panels, variables), Grafana's variables substituted. */
function dashboardQueries(): string[] {
  const dash = JSON.parse(fs.readFileSync(path.join(ROOT, 'deploy/grafana/longshot.json'), 'utf8')) as Obj;
  const panels: Obj[] = (dash.panels as Obj[]).flatMap((p) => [p, ...(p.panels ?? [])]);
  const exprs: string[] = panels.flatMap((p) => (p.targets ?? []).map((t: Obj) => t.expr as string));
  for (const v of (dash.templating.list as Obj[]).filter((x) => x.type === 'query')) {
    // label_values(metric, label) is Grafana's, not PromQL: the metric must have a series.
    const q = String(v.query.query ?? v.query);
    exprs.push(/^label_values\(([^,]+),/.exec(q)?.[1] ?? q);
  }
  const vars: Record<string, string> = { __rate_interval: '1m', __range: '10m', __interval: '1s', instance: '.*' };
  return exprs.map((e) =>
    e.replace(/\$\{?(\w+)\}?/g, (m, name: string) => {
      if (!(name in vars)) throw new Error(`dashboard variable ${m} (in ${e}) has no test value`);
      return vars[name];
    }),
  );
}

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-prometheus-'));
  // API keys on, as deployed: Prometheus scrapes and discovers with the cluster's operator key.
  cluster = await LocalCluster.start({ workers: 2, controllers: 1, name: 'prom', controllerEnv: { LONGSHOT_RESULTS_DIR: path.join(dir, 'results') } });
  controllerUrl = [...cluster.controllers.values()][0].url;
  operator = { authorization: `Bearer ${cluster.apiKey}` };
  const keyFile = path.join(dir, 'operator-key');
  fs.writeFileSync(keyFile, `${cluster.apiKey}\n`, { mode: 0o600 });
  const rulesFile = path.join(dir, 'rules.yml');
  fs.writeFileSync(rulesFile, dump(testRules()));
  const configFile = path.join(dir, 'prometheus.yml');
  fs.writeFileSync(configFile, dump(testConfig(new URL(controllerUrl), rulesFile, keyFile)));
  prometheus = await startPrometheus(configFile, path.join(dir, 'data'));
});

afterAll(async () => {
  await Promise.all([prometheus?.stop(), cluster?.stop()]);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('Prometheus on the shipped config, rules and dashboard', () => {
  it('discovers the workers through the controller, and after a job every panel query and recording rule has a series', async () => {
    const workers = [...cluster.workers.values()];
    // Discovery: one active target per worker, at its metrics address, labelled with its id.
    await waitFor('both workers to be scraped', async () => {
      const r = await request(prometheus.url, 'GET', '/api/v1/targets?state=active');
      const up = (r.json.data.activeTargets as Obj[]).filter((t) => t.labels.job === 'longshot-workers' && t.health === 'up');
      return up.length === workers.length;
    });
    const targets = (await request(prometheus.url, 'GET', '/api/v1/targets?state=active')).json.data.activeTargets as Obj[];
    const discovered = targets.filter((t) => t.labels.job === 'longshot-workers').map((t) => [t.labels.worker, t.labels.instance, t.labels.registration]);
    expect(discovered.sort()).toEqual(workers.map((w) => [w.id, w.metricsAddress, 'live']).sort());

    const job = { prompt: 'a lighthouse in a storm', size: '64x64', block: 2, context: 1, steps: 3, model: 'tiny', seed: 5, frames: 13, stages: 2 };
    const sub = await request(controllerUrl, 'POST', '/v1/videos', { body: job, headers: operator });
    expect(sub.status, sub.text).toBe(202);
    const done = await waitFor('the job to finish', async () => {
      const j = (await request(controllerUrl, 'GET', `/v1/videos/${sub.json.id}`, { headers: operator })).json;
      return ['succeeded', 'failed', 'canceled'].includes(j.status) ? j : null;
    });
    expect(done.status).toBe('succeeded');

    const rules = testRules().groups.flatMap((g: Obj) => g.rules) as Obj[];
    const queries = [...dashboardQueries(), ...rules.filter((r) => r.record).map((r) => r.record as string)];
    expect(queries.length).toBeGreaterThan(40);
    let empty: string[] = queries;
    try {
      await waitFor('every query to return a series', async () => {
        const counts = await Promise.all(queries.map((q) => prometheus.query(q).then((r) => r.length)));
        empty = queries.filter((_, i) => counts[i] === 0);
        return empty.length === 0;
      }, 90_000);
    } catch (e) {
      throw new Error(`${(e as Error).message}; no series for:\n  ${empty.join('\n  ')}`);
    }

    // Every worker is being scraped: none is down.
    const alerts = (await request(prometheus.url, 'GET', '/api/v1/alerts')).json.data.alerts as Obj[];
    expect(alerts.filter((a) => a.labels.alertname === 'LongshotWorkerDown' && a.state === 'firing')).toEqual([]);
  }, 240_000);

  it('fires LongshotWorkerDown for a SIGKILLed worker, which discovery keeps listing as lost', async () => {
    const [victim, survivor] = [...cluster.workers.values()];
    cluster.kill(victim.id);
    const firing = await waitFor('LongshotWorkerDown to fire for the killed worker', async () => {
      const alerts = (await request(prometheus.url, 'GET', '/api/v1/alerts')).json.data.alerts as Obj[];
      return alerts.find((a) => a.labels.alertname === 'LongshotWorkerDown' && a.labels.worker === victim.id && a.state === 'firing');
    });
    expect(firing.labels).toMatchObject({ job: 'longshot-workers', instance: victim.metricsAddress, severity: 'warning' });
    // Its registration expired without a deregistration: discovery lists it as lost, the other as live.
    const sd = await waitFor('the killed worker to be listed as lost', async () => {
      const r = await request(controllerUrl, 'GET', SD_PATH, { headers: operator });
      return r.json.some((g: Obj) => g.labels.worker === victim.id && g.labels.registration === 'lost') ? r.json : null;
    });
    expect(sd.map((g: Obj) => [g.labels.worker, g.labels.registration]).sort()).toEqual([[survivor.id, 'live'], [victim.id, 'lost']].sort());
    const alerts = (await request(prometheus.url, 'GET', '/api/v1/alerts')).json.data.alerts as Obj[];
    expect(alerts.filter((a) => a.labels.alertname === 'LongshotWorkerDown' && a.state === 'firing').map((a) => a.labels.worker)).not.toContain(survivor.id);
  });
});
