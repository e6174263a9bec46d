import type { JobRequest } from '@longshot/planner';
import { intFlag, parseFlags, UsageError } from './args';
import { ControllerClient, ControllerError, followWithProgress } from './client';
import { LocalCluster } from './local-cluster';
import { Progress } from './progress';
import { flagOfField, jobRequestFlags, requestFromFlags } from './render';

export const UP_HELP = `longshot up: run Redis, a controller and N workers on this machine until Ctrl-C

  --workers N      worker processes (3)
  --port P         controller port (8080; 0 = any free port)
  --emulate NAME   workers emulate a hardware profile instead of computing (h100-nvlink, ...)
`;

export const SUBMIT_HELP = `longshot submit --url URL [render flags] [--priority N] [--idempotency-key K] [--wait] [--json]
longshot status --url URL ID [--json]
longshot fetch  --url URL ID --out FILE
longshot cancel --url URL ID
`;

export async function upCommand(argv: string[]): Promise<void> {
  const f = parseFlags(argv, { workers: { type: 'string' }, port: { type: 'string' }, emulate: { type: 'string' }, help: { type: 'boolean', default: false } });
  if (f.help) return void process.stdout.write(UP_HELP);
  const workers = intFlag('workers', f.workers) ?? 3;
  if (workers < 1 || workers > 64) throw new UsageError(`--workers: expected 1..64, got ${workers}`);
  const port = intFlag('port', f.port) ?? 8080;
  if (port < 0 || port > 65535) throw new UsageError(`--port: expected 0..65535, got ${port}`);
  const cluster = await LocalCluster.start({
    workers,
    controllers: 1,
    controllerPort: port,
    respawn: true,
    name: 'up',
    workerArgs: f.emulate ? ['--emulate', f.emulate] : [],
  });
  const [controller] = [...cluster.controllers.values()];
  process.stdout.write(
    `longshot is up: controller ${controller.url} (API docs ${controller.url}/docs), ${workers} workers, redis ${cluster.redisUrl}\n` +
      `  try: npx longshot render --url ${controller.url} --prompt "a paper boat" --seconds 2\n  Ctrl-C stops everything.\n`,
  );
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  process.stdout.write('stopping...\n');
  await cluster.stop();
}

export async function submitCommand(argv: string[]): Promise<void> {
  const f = parseFlags(argv, {
    ...jobRequestFlags,
    url: { type: 'string' },
    priority: { type: 'string' },
    'idempotency-key': { type: 'string' },
    wait: { type: 'boolean', default: false },
    json: { type: 'boolean', default: false },
  });
  const client = clientFor(f.url);
  const request: JobRequest & { priority?: number } = { ...requestFromFlags(f), priority: intFlag('priority', f.priority) };
  const job = await withField(() => client.submit(request, f['idempotency-key']));
  if (!f.wait) {
    process.stdout.write(f.json ? `${JSON.stringify(job)}\n` : `${job.id} ${job.status}\n`);
    return;
  }
  const status = await followWithProgress(client, job.id, new Progress(process.stderr));
  process.stdout.write(f.json ? `${JSON.stringify(status)}\n` : `${status.id} ${status.status}\n`);
  if (status.status !== 'succeeded') process.exitCode = 1;
}

export async function statusCommand(argv: string[]): Promise<void> {
  const { client, id, f } = idCommand(argv, { json: { type: 'boolean', default: false } });
  const s = await withField(() => client.status(id));
  if (f.json) return void process.stdout.write(`${JSON.stringify(s)}\n`);
  const p = s.progress;
  process.stdout.write(`${s.id} ${s.status}: blocks ${p.blocksDone}/${p.blocks}, block-steps ${p.blockStepsDone}/${p.blockSteps}${p.etaSeconds !== null ? `, eta ${Math.round(p.etaSeconds)} s` : ''}${s.error ? `\nerror: ${s.error}` : ''}${s.result ? `\nlatentSha256 ${s.result.latentSha256}` : ''}\n`);
}

export async function fetchCommand(argv: string[]): Promise<void> {
  const { client, id, f } = idCommand(argv, { out: { type: 'string' } });
  const out = await withField(() => client.fetchContent(id, typeof f.out === 'string' ? f.out : `${id}.mp4`));
  process.stdout.write(`${out}\n`);
}

export async function cancelCommand(argv: string[]): Promise<void> {
  const { client, id } = idCommand(argv, {});
  const r = await withField(() => client.cancel(id));
  process.stdout.write(`${r.id} ${r.status}\n`);
}

function idCommand(argv: string[], extra: Parameters<typeof parseFlags>[1]) {
  const ids = argv.filter((a, i) => !a.startsWith('--') && !(i > 0 && argv[i - 1].startsWith('--') && !['--json'].includes(argv[i - 1])));
  if (ids.length !== 1) throw new UsageError(`expected one job id, got ${ids.length}\n${SUBMIT_HELP}`);
  const f = parseFlags(argv.filter((a) => a !== ids[0]), { url: { type: 'string' }, ...extra }) as Record<string, string | boolean | undefined>;
  return { client: clientFor(f.url as string | undefined), id: ids[0], f };
}

function clientFor(url: string | undefined): ControllerClient {
  const u = url ?? process.env.LONGSHOT_URL;
  if (!u) throw new UsageError('--url: required (or set LONGSHOT_URL), e.g. http://127.0.0.1:8080 from `longshot up`');
  try {
    return new ControllerClient(u);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** Turns a controller 400 into a usage error naming the flag that set the field. */
async function withField<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof ControllerError && e.status === 400 && typeof e.body === 'object' && e.body.field) {
      throw new UsageError(`--${flagOfField(e.body.field)}: ${e.body.message ?? e.body.error}`);
    }
    if (e instanceof TypeError && /fetch failed/.test(e.message)) throw new UsageError(`cannot reach the controller: ${(e.cause as Error | undefined)?.message ?? e.message}`);
    throw e;
  }
}
