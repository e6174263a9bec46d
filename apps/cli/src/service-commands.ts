import * as fs from 'node:fs';
import * as path from 'node:path';
import { describeLayout, type JobRequest } from '@longshot/planner';
import { intFlag, parseCommand, UsageError, type CommandSpec } from './args';
import { apiKeyFromEnv, ControllerClient, ControllerError, followWithProgress, type LayoutRequest } from './client';
import { checkWritable } from './errors';
import { JobLog } from './job-log';
import { LocalCluster } from './local-cluster';
import { Progress } from './progress';
import { flagOfField, JOB_FLAGS, layoutFromFlags, requestFromFlags } from './render';
import { aborted, stoppable } from './signals';

const URL_FLAG = { value: 'URL', help: 'the controller (or set LONGSHOT_URL), e.g. http://127.0.0.1:8080 from `longshot up`; the API key goes in LONGSHOT_API_KEY' } as const;

export const UP = {
  name: 'up',
  summary: 'run Redis, a controller and N workers here until Ctrl-C or SIGTERM',
  usage: 'longshot up [--workers N] [--port P] [--models-dir DIR] [--emulate NAME]',
  description: "Logs each job's life (queued, running, progress, how it ended). Every process it starts\nstops with it, even when it is killed.",
  flags: {
    workers: { value: 'N', help: 'worker processes, 1..64', default: '3' },
    port: { value: 'P', help: 'controller port (0 = any free port)', default: '8080' },
    emulate: { value: 'NAME', help: 'workers emulate a hardware profile instead of computing (h100-nvlink, ...)' },
    'models-dir': { value: 'DIR', help: 'serve the pipeline directories and .safetensors files in DIR by name (jobs name models, never paths)' },
  },
  run: (argv: string[]) => upCommand(argv),
} satisfies CommandSpec;

export const SUBMIT = {
  name: 'submit',
  summary: 'submit a job to a controller',
  usage: 'longshot submit --url URL --prompt TEXT [job flags] [--priority N] [--idempotency-key K] [--wait] [--json]',
  flags: {
    url: URL_FLAG,
    ...JOB_FLAGS,
    priority: { value: 'N', help: 'queue priority (lower runs first, as in BullMQ)' },
    'idempotency-key': { value: 'K', help: 'the same key returns the first job instead of a new one' },
    wait: { help: 'follow the job with a progress line until it ends (exit 1 unless it succeeded)' },
    json: { help: 'print the job (or its final status with --wait) as one JSON object' },
  },
  run: (argv: string[]) => submitCommand(argv),
} satisfies CommandSpec;

export const STATUS = {
  name: 'status',
  summary: "show a job's status, progress and result",
  usage: 'longshot status --url URL ID [--json]',
  flags: { url: URL_FLAG, json: { help: 'print the status as one JSON object' } },
  positionals: ['ID'],
  run: (argv: string[]) => statusCommand(argv),
} satisfies CommandSpec;

export const FETCH = {
  name: 'fetch',
  summary: "download a finished job's MP4",
  usage: 'longshot fetch --url URL ID [--out FILE]',
  flags: { url: URL_FLAG, out: { value: 'FILE', help: 'where to write the MP4', default: 'ID.mp4' } },
  positionals: ['ID'],
  run: (argv: string[]) => fetchCommand(argv),
} satisfies CommandSpec;

export const CANCEL = {
  name: 'cancel',
  summary: 'cancel a queued or running job',
  usage: 'longshot cancel --url URL ID',
  flags: { url: URL_FLAG },
  positionals: ['ID'],
  run: (argv: string[]) => cancelCommand(argv),
} satisfies CommandSpec;

/** How often `up` looks at the job list for its log. */
const JOB_LOG_INTERVAL_MS = 1000;

export async function upCommand(argv: string[]): Promise<void> {
  const f = parseCommand(UP, argv).values;
  const workers = intFlag('workers', f.workers) ?? 3;
  if (workers < 1 || workers > 64) throw new UsageError(`--workers: expected 1..64, got ${workers}`);
  const port = intFlag('port', f.port) ?? 8080;
  if (port < 0 || port > 65535) throw new UsageError(`--port: expected 0..65535, got ${port}`);
  const modelsDir = f['models-dir'] === undefined ? undefined : path.resolve(f['models-dir']);
  if (modelsDir !== undefined && !fs.statSync(modelsDir, { throwIfNoEntry: false })?.isDirectory()) throw new UsageError(`--models-dir: not a directory: ${f['models-dir']}`);
  let cluster: LocalCluster | null = null;
  await stoppable(async (signal) => {
    try {
      const progress = new Progress(process.stderr);
      progress.start('starting the cluster', workers + 2, 'processes');
      cluster = await LocalCluster.start({ workers, controllers: 1, controllerPort: port, respawn: true, name: 'up', modelsDir, workerArgs: f.emulate ? ['--emulate', f.emulate] : [], onStarted: () => progress.tick() });
      progress.stop();
      signal.throwIfAborted();
      const [controller] = [...cluster.controllers.values()];
      const apiKey = cluster.apiKey!;
      const pids = [cluster.redis.pid, ...[...cluster.controllers.values(), ...cluster.workers.values()].map((p) => p.process.pid)].filter((p) => p !== undefined);
      process.stdout.write(
        `longshot is up: controller ${controller.url} (API docs ${controller.url}/docs), ${workers} workers, redis ${cluster.redisUrl}\n` +
          `  operator API key: ${apiKey} (shown once: the console's sign-in, LONGSHOT_API_KEY, or Authorization: Bearer)\n` +
          `  processes (pids): ${pids.join(' ')}\n` +
          `  try: LONGSHOT_API_KEY=${apiKey} npx longshot render --url ${controller.url} --prompt "a paper boat" --seconds 2\n` +
          `  tenant keys: npx longshot keys create --redis ${cluster.redisUrl} --tenant NAME\n  Ctrl-C stops everything.\n`,
      );
      await logJobs(new ControllerClient(controller.url, apiKey), signal);
    } finally {
      if (cluster) {
        process.stdout.write('stopping...\n');
        await (cluster as LocalCluster).stop();
        process.stdout.write('stopped\n');
      }
    }
  });
}

/**
 * Prints each job's life until `signal` aborts: finds new jobs in the controller's list and
 * follows each one's event stream (which replays from its start, so no step is missed).
 */
async function logJobs(client: ControllerClient, signal: AbortSignal): Promise<void> {
  const log = new JobLog();
  const known = new Set<string>();
  const following: Promise<unknown>[] = [];
  const print = (line: string | null) => line && process.stdout.write(`${new Date().toISOString()} ${line}\n`);
  const stop = aborted(signal);
  for (let first = true; !signal.aborted; first = false) {
    try {
      for (const job of (await client.list(100)).items) {
        if (known.has(job.id)) continue;
        known.add(job.id);
        if (first && ['succeeded', 'failed', 'canceled'].includes(job.status)) continue; // ended before `up` looked
        following.push(
          client.follow(job.id, (e) => print(log.line(job, e)), signal).catch((e: unknown) => {
            if (!signal.aborted) process.stderr.write(`longshot up: following job ${job.id} failed: ${(e as Error).message}\n`);
          }),
        );
      }
    } catch (e) {
      if (!signal.aborted) process.stderr.write(`longshot up: reading the job list failed: ${(e as Error).message}\n`);
    }
    await Promise.race([stop, new Promise((r) => setTimeout(r, JOB_LOG_INTERVAL_MS))]);
  }
  await Promise.all(following);
}

export async function submitCommand(argv: string[]): Promise<void> {
  const f = parseCommand(SUBMIT, argv).values;
  const client = clientFor(f.url);
  const request: JobRequest & LayoutRequest & { priority?: number } = { ...requestFromFlags(f), ...layoutFromFlags(f), priority: intFlag('priority', f.priority) };
  const job = await withField(() => client.submit(request, f['idempotency-key']));
  if (!f.wait) {
    process.stdout.write(f.json ? `${JSON.stringify(job)}\n` : `${job.id} ${job.status}\n`);
    return;
  }
  const status = await stoppable((signal) => followWithProgress(client, job.id, new Progress(process.stderr), signal));
  process.stdout.write(f.json ? `${JSON.stringify(status)}\n` : `${status.id} ${status.status}\n`);
  if (status.status !== 'succeeded') process.exitCode = 1;
}

export async function statusCommand(argv: string[]): Promise<void> {
  const { values: f, positionals: [id] } = parseCommand(STATUS, argv);
  const s = await withField(() => clientFor(f.url).status(id), id);
  if (f.json) return void process.stdout.write(`${JSON.stringify(s)}\n`);
  const p = s.progress;
  process.stdout.write(`${s.id} ${s.status}: blocks ${p.blocksDone}/${p.blocks}, block-steps ${p.blockStepsDone}/${p.blockSteps}${p.etaSeconds !== null ? `, eta ${Math.round(p.etaSeconds)} s` : ''}${s.error ? `\nerror: ${s.error.message}` : ''}${s.result ? `\nlayout ${describeLayout(s.result.layout)}\nlatentSha256 ${s.result.latentSha256}` : ''}\n`);
}

export async function fetchCommand(argv: string[]): Promise<void> {
  const { values: f, positionals: [id] } = parseCommand(FETCH, argv);
  const client = clientFor(f.url);
  const out = path.resolve(f.out ?? `${id}.mp4`);
  checkWritable('out', out);
  process.stdout.write(`${await withField(() => client.fetchContent(id, out), id)}\n`);
}

export async function cancelCommand(argv: string[]): Promise<void> {
  const { values: f, positionals: [id] } = parseCommand(CANCEL, argv);
  const r = await withField(() => clientFor(f.url).cancel(id), id);
  process.stdout.write(`${r.id} ${r.status}\n`);
}

function clientFor(url: string | undefined): ControllerClient {
  const u = url ?? process.env.LONGSHOT_URL;
  if (!u) throw new UsageError('--url: required (or set LONGSHOT_URL), e.g. http://127.0.0.1:8080 from `longshot up`');
  return new ControllerClient(u, apiKeyFromEnv());
}


/**
 * The controller's answers that are the user's to fix, as one line: a 400 names the flag that set
 * the field, a 404/409 names the job.
 */
async function withField<T>(fn: () => Promise<T>, job?: string): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (!(e instanceof ControllerError)) throw e;
    const body = typeof e.body === 'object' ? e.body : { message: e.body };
    if (e.status === 401 || e.status === 403) throw new UsageError(`LONGSHOT_API_KEY: ${body.message ?? body.error ?? `HTTP ${e.status}`}`);
    if (e.status === 400 && body.field) throw new UsageError(`--${flagOfField(body.field)}: ${body.message ?? body.error}`);
    if (job !== undefined && (e.status === 404 || e.status === 409)) throw new UsageError(`job ${job}: ${body.message ?? body.error ?? `HTTP ${e.status}`}`);
    throw e;
  }
}
