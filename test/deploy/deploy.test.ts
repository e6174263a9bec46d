/**
 * Static checks of the deployment artefacts (k8s/, deploy/): they must parse, be complete, follow
 * the platform rules (resources, probes, non-root), and reference only metrics the code exports,
 * so that renaming a metric breaks this test instead of a dashboard in production.
 * Runs without Docker, a cluster or network. Needs `promtool` (Debian package `prometheus`).
 */
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadAll } from 'js-yaml';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { beforeAll, describe, expect, it } from 'vitest';
import { workerConfig } from '../../apps/worker/src/config';

const ROOT = path.resolve(__dirname, '../..');
const rel = (p: string) => path.relative(ROOT, p);

// ---------------------------------------------------------------------------------------------
// YAML helpers and a small kustomize (resources, strategic-merge and JSON 6902 patches, images):
// enough for our overlays, and cross-checked against `kubectl kustomize` where kubectl exists.
// ---------------------------------------------------------------------------------------------

type Obj = Record<string, any>;

function walk(dir: string, pred: (f: string) => boolean): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return e.name === 'node_modules' ? [] : walk(p, pred);
    return pred(p) ? [p] : [];
  });
}

function docsOf(file: string): Obj[] {
  return (loadAll(fs.readFileSync(file, 'utf8')) as unknown[]).filter((d): d is Obj => d !== null && typeof d === 'object');
}

/** Applies YAML merge keys (`<<: *anchor`), which js-yaml's default (YAML 1.2) schema leaves as-is. */
function resolveMergeKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(resolveMergeKeys);
  if (!isObj(v)) return v;
  const out: Obj = {};
  const merged = v['<<'];
  for (const m of Array.isArray(merged) ? merged : merged ? [merged] : []) Object.assign(out, resolveMergeKeys(m));
  for (const [k, x] of Object.entries(v)) if (k !== '<<') out[k] = resolveMergeKeys(x);
  return out;
}

const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

function smpMerge(base: unknown, patch: unknown): unknown {
  if (!isObj(base) || !isObj(patch)) {
    if (Array.isArray(base) && Array.isArray(patch) && [...base, ...patch].every((e) => isObj(e) && typeof e.name === 'string')) {
      // Lists of named items (containers, env, ports, volumes, volumeMounts) merge by name; items
      // only the patch has come first, in its order (as kubectl kustomize puts them).
      const out = base.map((e) => ({ ...e }));
      const added: Obj[] = [];
      for (const p of patch as Obj[]) {
        const i = out.findIndex((e) => e.name === p.name);
        if (i >= 0) out[i] = smpMerge(out[i], p) as Obj;
        else added.push(p);
      }
      return [...added, ...out];
    }
    return patch;
  }
  const out: Obj = { ...base };
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = k in out ? smpMerge(out[k], v) : v;
  }
  return out;
}

function jsonPatch(doc: Obj, ops: Obj[]): void {
  for (const op of ops) {
    const parts = String(op.path).split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
    const last = parts.pop()!;
    let cur: any = doc;
    for (const p of parts) {
      cur = cur?.[Array.isArray(cur) ? Number(p) : p];
      if (cur === undefined) throw new Error(`json patch ${op.op} ${op.path}: path does not exist`);
    }
    if (op.op === 'remove') {
      if (!(last in cur)) throw new Error(`json patch remove ${op.path}: nothing there`);
      if (Array.isArray(cur)) cur.splice(Number(last), 1);
      else delete cur[last];
    } else if (op.op === 'add' || op.op === 'replace') {
      if (Array.isArray(cur)) last === '-' ? cur.push(op.value) : cur.splice(Number(last), op.op === 'add' ? 0 : 1, op.value);
      else cur[last] = op.value;
    } else throw new Error(`json patch op ${op.op} is not supported by this test`);
  }
}

const key = (d: Obj) => `${d.kind}/${d.metadata?.name}`;

interface Rendered {
  docs: Obj[];
  generated: Set<string>;
}

function render(dir: string): Rendered {
  const k = docsOf(path.join(dir, 'kustomization.yaml'))[0];
  let docs: Obj[] = [];
  const generated = new Set<string>();
  for (const r of k.resources ?? []) {
    const p = path.join(dir, r);
    if (fs.statSync(p).isDirectory()) {
      const sub = render(p);
      docs.push(...sub.docs);
      sub.generated.forEach((g) => generated.add(g));
    } else docs.push(...docsOf(p));
  }
  for (const g of [...(k.configMapGenerator ?? []), ...(k.secretGenerator ?? [])]) generated.add(g.name);
  docs = structuredClone(docs);
  for (const patch of k.patches ?? []) {
    const patchDocs: unknown[] = patch.path ? (loadAll(fs.readFileSync(path.join(dir, patch.path), 'utf8')) as unknown[]) : (loadAll(patch.patch) as unknown[]);
    if (patch.target) {
      const targets = docs.filter((d) => d.kind === patch.target.kind && d.metadata?.name === patch.target.name);
      expect(targets, `patch target ${JSON.stringify(patch.target)} in ${rel(dir)}`).toHaveLength(1);
      const body = patchDocs[0];
      if (Array.isArray(body)) jsonPatch(targets[0], body as Obj[]);
      else Object.assign(targets[0], smpMerge(targets[0], body));
      continue;
    }
    for (const p of patchDocs.filter(isObj)) {
      const i = docs.findIndex((d) => key(d) === key(p));
      expect(i, `patch ${patch.path} in ${rel(dir)} targets ${key(p)}, which the resources do not define`).toBeGreaterThanOrEqual(0);
      if (p.$patch === 'delete') docs.splice(i, 1);
      else docs[i] = smpMerge(docs[i], p) as Obj;
    }
  }
  for (const img of k.images ?? []) {
    for (const c of docs.flatMap(containersOf)) {
      const [name] = String(c.image).split(':');
      if (name === img.name) c.image = `${img.newName ?? name}${img.newTag ? `:${img.newTag}` : ''}`;
    }
  }
  return { docs, generated };
}

function podSpecOf(d: Obj): Obj | undefined {
  return ['Deployment', 'StatefulSet', 'DaemonSet', 'Job'].includes(d.kind) ? d.spec?.template?.spec : undefined;
}
function containersOf(d: Obj): Obj[] {
  const s = podSpecOf(d);
  return s ? [...(s.initContainers ?? []), ...(s.containers ?? [])] : [];
}
function one(r: Rendered, kind: string, name: string): Obj {
  const found = r.docs.filter((d) => d.kind === kind && d.metadata?.name === name);
  expect(found, `${kind}/${name}`).toHaveLength(1);
  return found[0];
}
const container = (d: Obj, name: string): Obj => {
  const c = d.spec.template.spec.containers.find((x: Obj) => x.name === name);
  expect(c, `container ${name} in ${key(d)}`).toBeDefined();
  return c;
};
const flagValue = (args: string[], flag: string): string | undefined => {
  const i = args.indexOf(flag);
  return i >= 0 ? args[i + 1] : undefined;
};

// ---------------------------------------------------------------------------------------------
// Metric names the code exports.
// ---------------------------------------------------------------------------------------------

interface Known {
  /** Base names with their kind ('histogram', 'counter', 'gauge', 'summary' or 'unknown'). */
  kinds: Map<string, string>;
  /** Every name a query may use (histograms' _bucket/_sum/_count included). */
  series: Set<string>;
}

async function knownMetrics(): Promise<Known> {
  const kinds = new Map<string, string>();
  const sources = [...walk(path.join(ROOT, 'apps'), () => true), ...walk(path.join(ROOT, 'libs'), () => true)].filter(
    (f) => /\.ts$/.test(f) && f.split(path.sep).includes('src'),
  );
  for (const f of sources) {
    const text = fs.readFileSync(f, 'utf8');
    for (const m of text.matchAll(/name:\s*['"`](longshot_[a-z0-9_]+)['"`]/g)) kinds.set(m[1], kinds.get(m[1]) ?? 'unknown');
    for (const m of text.matchAll(/\b(counter|gauge|histogram|summary|Counter|Gauge|Histogram|Summary)\s*(?:<[^>]*>)?\s*\(\s*\{\s*name:\s*['"`](longshot_[a-z0-9_]+)['"`]/g)) {
      kinds.set(m[2], m[1].toLowerCase());
    }
  }
  // prom-client's default process metrics (collectDefaultMetrics in libs/telemetry).
  const defaults = new Registry();
  collectDefaultMetrics({ register: defaults });
  for (const m of await defaults.getMetricsAsJSON()) kinds.set(m.name, String(m.type));
  // Prometheus' own per-target series (`up`: 1 when the last scrape succeeded).
  kinds.set('up', 'gauge');
  const series = new Set<string>();
  for (const [name, kind] of kinds) {
    series.add(name);
    if (kind === 'histogram' || kind === 'unknown') ['_bucket', '_sum', '_count'].forEach((s) => series.add(name + s));
    if (kind === 'summary') ['_sum', '_count'].forEach((s) => series.add(name + s));
  }
  return { kinds, series };
}

/** Metric-like identifiers in a PromQL expression (string literals and $variables removed). */
function metricRefs(expr: string): { metrics: string[]; recorded: string[] } {
  const cleaned = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""')
    .replace(/\$\{?[A-Za-z_][A-Za-z0-9_]*\}?/g, '')
    .replace(/\[[^\]]*\]/g, '');
  const ids = [...cleaned.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)].map((m) => m[0]);
  return {
    metrics: ids.filter((id) => /^(longshot_|process_|nodejs_)/.test(id) || id === 'up'),
    recorded: ids.filter((id) => id.includes(':')),
  };
}

// ---------------------------------------------------------------------------------------------

const yamlFiles = [...walk(path.join(ROOT, 'k8s'), (f) => /\.ya?ml$/.test(f)), ...walk(path.join(ROOT, 'deploy'), (f) => /\.ya?ml$/.test(f))];
const kustomizations = walk(path.join(ROOT, 'k8s'), (f) => path.basename(f) === 'kustomization.yaml').map(path.dirname);
const RULES = path.join(ROOT, 'deploy/prometheus/rules.yml');
const DASHBOARD = path.join(ROOT, 'deploy/grafana/longshot.json');
const PROMETHEUS_CONFIG = path.join(ROOT, 'deploy/prometheus/prometheus.yml');

describe('deployment files parse', () => {
  it('finds the expected files', () => {
    for (const f of ['k8s/base/kustomization.yaml', 'k8s/overlays/dev/kustomization.yaml', 'k8s/overlays/prod/kustomization.yaml', 'deploy/compose.yaml', 'deploy/prometheus/rules.yml', 'deploy/prometheus/prometheus.yml']) {
      expect(yamlFiles.map(rel), f).toContain(f);
    }
  });

  it.each(yamlFiles.map(rel))('%s is valid YAML', (f) => {
    const docs = docsOf(path.join(ROOT, f));
    expect(docs.length).toBeGreaterThan(0);
  });

  it('the Grafana dashboard is valid JSON', () => {
    expect(() => JSON.parse(fs.readFileSync(DASHBOARD, 'utf8'))).not.toThrow();
  });
});

describe('kustomizations', () => {
  it.each(kustomizations.map(rel))('%s references only files that exist', (dir) => {
    const k = docsOf(path.join(ROOT, dir, 'kustomization.yaml'))[0];
    const refs: string[] = [
      ...(k.resources ?? []),
      ...(k.components ?? []),
      ...(k.patches ?? []).filter((p: Obj) => p.path).map((p: Obj) => p.path),
      ...[...(k.configMapGenerator ?? []), ...(k.secretGenerator ?? [])].flatMap((g: Obj) => [...(g.files ?? []), ...(g.envs ?? [])].map((f: string) => f.split('=').pop()!)),
    ];
    expect(refs.length).toBeGreaterThan(0);
    for (const r of refs) {
      const p = path.join(ROOT, dir, r);
      expect(fs.existsSync(p), `${dir}: ${r} does not exist`).toBe(true);
      if (fs.statSync(p).isDirectory()) expect(fs.existsSync(path.join(p, 'kustomization.yaml')), `${r} has no kustomization.yaml`).toBe(true);
    }
  });

  it('the base is namespace-agnostic', () => {
    expect(docsOf(path.join(ROOT, 'k8s/base/kustomization.yaml'))[0].namespace).toBeUndefined();
    for (const d of render(path.join(ROOT, 'k8s/base')).docs) {
      expect(d.metadata?.namespace, key(d)).toBeUndefined();
      expect(d.kind).not.toBe('Namespace');
    }
  });
});

const variants = ['base', 'overlays/dev', 'overlays/prod'] as const;

describe.each(variants)('k8s/%s workloads', (variant) => {
  const r = render(path.join(ROOT, 'k8s', variant));
  const workloads = r.docs.filter((d) => podSpecOf(d));

  it('has the controller, the worker and Redis', () => {
    expect(workloads.map(key).sort()).toEqual(['Deployment/longshot-controller', 'Deployment/longshot-worker', 'StatefulSet/redis']);
  });

  it.each(workloads.map((d) => [key(d), d] as const))('%s: containers have resources, probes and run as non-root', (_k, d) => {
    const pod = podSpecOf(d)!;
    for (const c of pod.containers) {
      const where = `${key(d)} container ${c.name}`;
      expect(c.resources?.requests?.cpu, `${where}: requests.cpu`).toBeDefined();
      expect(c.resources?.requests?.memory, `${where}: requests.memory`).toBeDefined();
      expect(c.resources?.limits?.memory, `${where}: limits.memory`).toBeDefined();
      expect(c.readinessProbe, `${where}: readinessProbe`).toBeDefined();
      expect(c.livenessProbe, `${where}: livenessProbe`).toBeDefined();
      expect(c.securityContext?.runAsNonRoot ?? pod.securityContext?.runAsNonRoot, `${where}: runAsNonRoot`).toBe(true);
      const uid = c.securityContext?.runAsUser ?? pod.securityContext?.runAsUser;
      expect(uid, `${where}: runAsUser`).toBeGreaterThan(0);
      expect(c.securityContext?.allowPrivilegeEscalation, `${where}: allowPrivilegeEscalation`).toBe(false);
      expect(c.securityContext?.capabilities?.drop, `${where}: capabilities.drop`).toContain('ALL');
      expect(c.image, `${where}: image`).toBeTruthy();
      for (const ref of c.envFrom ?? []) {
        const name = ref.configMapRef?.name ?? ref.secretRef?.name;
        expect(r.generated.has(name), `${where}: envFrom ${name} is not generated by the kustomization`).toBe(true);
      }
    }
    // Every volume that mounts a ConfigMap is generated here.
    for (const v of pod.volumes ?? []) if (v.configMap) expect(r.generated.has(v.configMap.name), `${key(d)} volume ${v.name}`).toBe(true);
  });

  it('controller: HTTP probes on /readyz and /healthz, a Service, a results volume and a PDB', () => {
    const d = one(r, 'Deployment', 'longshot-controller');
    const c = container(d, 'controller');
    expect(c.readinessProbe.httpGet.path).toBe('/readyz');
    expect(c.livenessProbe.httpGet.path).toBe('/healthz');
    expect(c.ports.map((p: Obj) => p.containerPort)).toContain(8080);
    const results = d.spec.template.spec.volumes.find((v: Obj) => v.persistentVolumeClaim);
    const pvc = one(r, 'PersistentVolumeClaim', results.persistentVolumeClaim.claimName);
    // More than one replica writes and serves results: the volume must be shared.
    if ((d.spec.replicas ?? 1) > 1) expect(pvc.spec.accessModes).toContain('ReadWriteMany');
    expect(one(r, 'Service', 'longshot-controller').spec.ports[0].port).toBe(8080);
    expect(one(r, 'PodDisruptionBudget', 'longshot-controller').spec.selector.matchLabels).toEqual(d.spec.selector.matchLabels);
  });

  it('worker: gRPC readiness, advertised pod IP, ports, drain shorter than the grace period, headless Service, PDB', () => {
    const d = one(r, 'Deployment', 'longshot-worker');
    const pod = d.spec.template.spec;
    const c = container(d, 'worker');
    expect(c.readinessProbe.grpc?.port).toBe(50051);
    expect(Object.fromEntries(c.ports.map((p: Obj) => [p.name, p.containerPort]))).toMatchObject({ grpc: 50051, dataplane: 50052, metrics: 9464 });
    const env = Object.fromEntries(c.env.map((e: Obj) => [e.name, e]));
    // The data-plane listener on the port the pod declares (and the NetworkPolicy opens).
    expect(env.LONGSHOT_DATA_PLANE_PORT.value).toBe('50052');
    expect(env.POD_IP.valueFrom.fieldRef.fieldPath).toBe('status.podIP');
    expect(env.LONGSHOT_WORKER_ADVERTISE.value).toBe('$(POD_IP)');
    // $(POD_IP) expands only when POD_IP is defined earlier in the list.
    expect(c.env.findIndex((e: Obj) => e.name === 'POD_IP')).toBeLessThan(c.env.findIndex((e: Obj) => e.name === 'LONGSHOT_WORKER_ADVERTISE'));
    expect(flagValue(c.args, '--host')).toBe('0.0.0.0');
    const drain = Number(flagValue(c.args, '--drain') ?? 30); // the worker's default (apps/worker/src/config.ts)
    // The worker drains for --drain seconds, then waits up to 5 s for the gRPC server to stop.
    expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(drain + 5);
    const svc = one(r, 'Service', 'longshot-worker');
    expect(svc.spec.clusterIP).toBe('None');
    expect(svc.spec.ports.map((p: Obj) => p.port).sort((a: number, b: number) => a - b)).toEqual([9464, 50051]);
    expect(one(r, 'PodDisruptionBudget', 'longshot-worker').spec.selector.matchLabels).toEqual(d.spec.selector.matchLabels);
  });

  it('controller and worker: REDIS_URL from the generated Secret by key; the model weights volume read-only at LONGSHOT_MODELS_DIR', () => {
    const base = docsOf(path.join(ROOT, 'k8s/base/kustomization.yaml'))[0];
    const literal = (gens: Obj[], name: string, key: string) => (gens.find((g) => g.name === name)?.literals as string[] | undefined)?.find((l) => l.startsWith(`${key}=`))?.slice(key.length + 1);
    expect(literal(base.secretGenerator, 'longshot-redis', 'REDIS_URL')).toMatch(/^rediss?:\/\//);
    const modelsDir = literal(base.configMapGenerator, 'longshot-shared', 'LONGSHOT_MODELS_DIR');
    expect(modelsDir).toMatch(/^\//);
    for (const [name, containerName] of [['longshot-controller', 'controller'], ['longshot-worker', 'worker']]) {
      const d = one(r, 'Deployment', name);
      const c = container(d, containerName);
      const where = `${name}: `;
      expect(c.env.find((e: Obj) => e.name === 'REDIS_URL')?.valueFrom?.secretKeyRef, `${where}REDIS_URL`).toEqual({ name: 'longshot-redis', key: 'REDIS_URL' });
      expect(r.generated.has('longshot-redis')).toBe(true);
      // One source: not also the whole Secret as environment.
      expect((c.envFrom ?? []).map((e: Obj) => e.secretRef?.name), where).not.toContain('longshot-redis');
      expect(c.envFrom.map((e: Obj) => e.configMapRef?.name), `${where}reads LONGSHOT_MODELS_DIR`).toContain('longshot-shared');
      const mount = c.volumeMounts.find((m: Obj) => m.mountPath === modelsDir);
      expect(mount, `${where}a volume at ${modelsDir}`).toBeDefined();
      expect(mount.readOnly, `${where}models mounted read-only`).toBe(true);
      const volume = d.spec.template.spec.volumes.find((v: Obj) => v.name === mount.name);
      expect(volume.persistentVolumeClaim, `${where}models volume`).toMatchObject({ claimName: 'longshot-models', readOnly: true });
    }
    // Every worker pod, on any node, mounts it: shared storage (a one-node dev cluster shares RWO).
    const modes = one(r, 'PersistentVolumeClaim', 'longshot-models').spec.accessModes as string[];
    if (variant === 'overlays/dev') expect(modes).toEqual(['ReadWriteOnce']);
    else expect(modes.some((m) => m === 'ReadWriteMany' || m === 'ReadOnlyMany'), modes.join()).toBe(true);
  });

  it('worker gRPC port: a NetworkPolicy admits only the controller and other workers; metrics stay scrapeable', () => {
    const d = one(r, 'Deployment', 'longshot-worker');
    const controller = one(r, 'Deployment', 'longshot-controller');
    const np = one(r, 'NetworkPolicy', 'longshot-worker');
    // Selects exactly the worker pods (a selector that matched nothing would protect nothing).
    const podLabels = d.spec.template.metadata.labels;
    for (const [k, v] of Object.entries(np.spec.podSelector.matchLabels)) expect(podLabels[k], k).toBe(v);
    expect(np.spec.policyTypes).toEqual(['Ingress']);
    const grpcRules = np.spec.ingress.filter((i: Obj) => i.ports.some((p: Obj) => p.port === 50051));
    expect(grpcRules).toHaveLength(1);
    const from = grpcRules[0].from as Obj[];
    // Only pod selectors (same namespace), each matching one of Longshot's own Deployments.
    for (const peer of from) {
      expect(peer.namespaceSelector, 'no other namespace').toBeUndefined();
      expect(peer.ipBlock, 'no IP ranges').toBeUndefined();
      const matches = [d, controller].filter((w) => Object.entries(peer.podSelector.matchLabels).every(([k, v]) => w.spec.template.metadata.labels[k] === v));
      expect(matches.length, JSON.stringify(peer)).toBe(1);
    }
    expect(from.map((p) => p.podSelector.matchLabels['app.kubernetes.io/name']).sort()).toEqual(['longshot-controller', 'longshot-worker']);
    // The data plane admits other workers only (the previous stage sends there).
    const dataPlane = np.spec.ingress.filter((i: Obj) => i.ports.some((p: Obj) => p.port === 50052));
    expect(dataPlane).toHaveLength(1);
    expect(dataPlane[0].from).toEqual([{ podSelector: { matchLabels: { 'app.kubernetes.io/name': 'longshot-worker' } } }]);
    // The metrics port is a separate rule; no rule opens any other port.
    const ports = np.spec.ingress.flatMap((i: Obj) => i.ports.map((p: Obj) => p.port)).sort((a: number, b: number) => a - b);
    expect(ports).toEqual([9464, 50051, 50052]);
    // Workers and controllers read the same grant keys (the controller signs, workers verify).
    for (const [w, name] of [[d, 'worker'], [controller, 'controller']] as const) {
      expect(container(w, name).envFrom.map((e: Obj) => e.secretRef?.name)).toContain('longshot-grant-keys');
    }
  });

  it('Redis: a StatefulSet with a PVC and AOF on, noeviction', () => {
    const s = one(r, 'StatefulSet', 'redis');
    expect(s.spec.volumeClaimTemplates?.length).toBeGreaterThan(0);
    const conf = fs.readFileSync(path.join(ROOT, 'k8s/base/redis.conf'), 'utf8');
    expect(conf).toMatch(/^appendonly yes$/m);
    // BullMQ breaks silently if Redis evicts its keys.
    expect(conf).toMatch(/^maxmemory-policy noeviction$/m);
  });
});

describe('overlays', () => {
  it('prod: workers request a GPU each, on H100 nodes, autoscaled on queue depth', () => {
    const r = render(path.join(ROOT, 'k8s/overlays/prod'));
    const w = one(r, 'Deployment', 'longshot-worker');
    const c = container(w, 'worker');
    expect(Number(c.resources.limits['nvidia.com/gpu'])).toBe(1);
    expect(w.spec.template.spec.nodeSelector['nvidia.com/gpu.product']).toMatch(/H100/);
    expect(w.spec.template.spec.tolerations.some((t: Obj) => t.key === 'nvidia.com/gpu')).toBe(true);
    expect(flagValue(c.args, '--backend')).not.toBe('cpu');
    // Topology: the node is the NVLink domain (one NVSwitch per HGX node), 100 Gb/s between nodes;
    // the base's env stays (merged by name).
    const env = (name: string) => c.env.find((e: Obj) => e.name === name);
    expect(env('LONGSHOT_NVLINK_DOMAIN')).toEqual({ name: 'LONGSHOT_NVLINK_DOMAIN', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } });
    expect(env('LONGSHOT_LINK_GBPS').value).toBe('100');
    expect(env('POD_IP')).toBeDefined();
    // Checkpoints by time (docs/operations.md, Redis), a value the worker's own config accepts.
    const grantKeys = `k1:${'s'.repeat(32)}`;
    expect(workerConfig([], { REDIS_URL: 'redis://redis:6379', LONGSHOT_GRANT_KEYS: grantKeys, LONGSHOT_CHECKPOINT_EVERY: env('LONGSHOT_CHECKPOINT_EVERY').value }).config.checkpointEvery).toEqual({ seconds: 30 });
    const so = one(r, 'ScaledObject', 'longshot-worker');
    expect(so.spec.scaleTargetRef).toMatchObject({ kind: 'Deployment', name: 'longshot-worker' });
    expect(so.spec.triggers.length).toBeGreaterThan(0);
    // KEDA owns the count: a replicas field would reset it on every apply.
    expect(w.spec.replicas).toBeUndefined();
    expect(one(r, 'Deployment', 'longshot-controller').spec.replicas).toBe(2);
    expect(container(one(r, 'Deployment', 'longshot-controller'), 'controller').image).toMatch(/:[\w.-]+$/);
  });

  it('dev: CPU workers, one controller, no GPU, no KEDA', () => {
    const r = render(path.join(ROOT, 'k8s/overlays/dev'));
    expect(JSON.stringify(r.docs)).not.toContain('nvidia.com/gpu');
    const w = one(r, 'Deployment', 'longshot-worker');
    expect(flagValue(container(w, 'worker').args, '--backend')).toBe('cpu');
    expect(w.spec.replicas).toBeGreaterThanOrEqual(2);
    expect(one(r, 'Deployment', 'longshot-controller').spec.replicas).toBe(1);
    expect(r.docs.filter((d) => d.kind === 'ScaledObject')).toHaveLength(0);
  });

  const kubectl = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' }).status === 0;
  /** An env entry with a generated Secret's or ConfigMap's hash suffix removed from its reference. */
  const unhashed = (e: Obj): Obj => {
    const ref = e.valueFrom?.secretKeyRef ?? e.valueFrom?.configMapKeyRef;
    return ref ? { ...e, valueFrom: { [Object.keys(e.valueFrom)[0]]: { ...ref, name: String(ref.name).replace(/-[a-z0-9]{10}$/, '') } } } : e;
  };
  it.skipIf(!kubectl).each(variants)('kubectl kustomize k8s/%s agrees with this test’s rendering', (variant) => {
    const out = execFileSync('kubectl', ['kustomize', path.join(ROOT, 'k8s', variant)], { encoding: 'utf8' });
    const real = (loadAll(out) as Obj[]).filter(isObj);
    const mine = render(path.join(ROOT, 'k8s', variant)).docs;
    // Generated ConfigMaps/Secrets carry a content hash suffix in kustomize's output.
    const strip = (d: Obj) => (['ConfigMap', 'Secret'].includes(d.kind) ? key(d).replace(/-[a-z0-9]{10}$/, '') : key(d));
    // This test does not render generators; compare what it does render.
    real.splice(0, real.length, ...real.filter((d) => !['ConfigMap', 'Secret'].includes(d.kind)));
    expect(real.map(strip).sort()).toEqual(mine.map(strip).sort());
    for (const d of mine.filter((x) => podSpecOf(x))) {
      const k = real.find((x) => key(x) === key(d))!;
      const pick = (x: Obj) => {
        const s = x.spec.template.spec;
        return {
          replicas: x.spec.replicas,
          nodeSelector: s.nodeSelector,
          tolerations: s.tolerations,
          grace: s.terminationGracePeriodSeconds,
          containers: s.containers.map((c: Obj) => ({ image: c.image, args: c.args, resources: c.resources, ports: c.ports, readiness: c.readinessProbe, liveness: c.livenessProbe, env: c.env?.map(unhashed), mounts: c.volumeMounts })),
        };
      };
      expect(pick(k), key(d)).toEqual(pick(d));
    }
  });
});

describe('Redis probes', () => {
  const redis = container(one(render(path.join(ROOT, 'k8s/base')), 'StatefulSet', 'redis'), 'redis');

  /** Runs an exec probe's command here, its `redis-cli` pointed at `port`; resolves to its exit status. */
  const probe = (command: string[], port: number, dir: string): Promise<number | null> => {
    const wrapper = path.join(dir, 'redis-cli');
    fs.writeFileSync(wrapper, `#!/bin/sh\nexec ${JSON.stringify(execFileSync('sh', ['-c', 'command -v redis-cli'], { encoding: 'utf8' }).trim())} -p ${port} "$@"\n`, { mode: 0o755 });
    return new Promise((resolve) => execFile(command[0], command.slice(1), { env: { ...process.env, PATH: `${dir}:${process.env.PATH}` } }, (err) => resolve(err ? ((err as { code?: number }).code ?? -1) : 0)));
  };

  it('readiness and liveness read the PING reply: pass on PONG, fail on an error reply (redis-cli exits 0 on those) or no answer', async () => {
    const { startRedis } = await import('@longshot/cache');
    const { Redis } = await import('ioredis');
    const ready = redis.readinessProbe.exec.command as string[];
    const live = redis.livenessProbe.exec.command as string[];
    const composeCheck = (docsOf(path.join(ROOT, 'deploy/compose.yaml'))[0].services.redis.healthcheck.test as string[]);
    expect(composeCheck[0]).toBe('CMD-SHELL');
    const compose = ['sh', '-c', composeCheck[1]];
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-probe-'));
    const server = await startRedis({ url: null });
    const port = Number(new URL(server.url).port);
    const client = new Redis(server.url);
    try {
      expect(await probe(ready, port, dir)).toBe(0);
      expect(await probe(compose, port, dir)).toBe(0);
      expect(await probe(live, port, dir)).toBe(0);
      // An error reply to PING (NOAUTH here; LOADING, MASTERDOWN... alike).
      await client.config('SET', 'requirepass', 'probe-test-password');
      expect(execFileSync(path.join(dir, 'redis-cli'), ['ping'], { encoding: 'utf8' }).trim()).toMatch(/^NOAUTH/);
      expect(await probe(ready, port, dir)).not.toBe(0);
      expect(await probe(compose, port, dir)).not.toBe(0);
      expect(await probe(live, port, dir)).not.toBe(0);
      await client.config('SET', 'requirepass', '');
      client.disconnect();
      await server.stop();
      // Nothing listening.
      expect(await probe(ready, port, dir)).not.toBe(0);
      expect(await probe(compose, port, dir)).not.toBe(0);
      expect(await probe(live, port, dir)).not.toBe(0);
    } finally {
      client.disconnect();
      await server.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('compose and Dockerfile', () => {
  it('compose: Redis, a controller and two CPU workers with healthchecks and ordered start', () => {
    const c = resolveMergeKeys(docsOf(path.join(ROOT, 'deploy/compose.yaml'))[0]) as Obj;
    const s = c.services as Obj;
    expect(s.redis.command.join(' ')).toMatch(/--appendonly yes/);
    const workers = Object.keys(s).filter((n) => n.startsWith('worker'));
    expect(workers).toHaveLength(2);
    for (const n of ['redis', 'controller', ...workers]) {
      expect(s[n].healthcheck?.test, `${n}: healthcheck`).toBeDefined();
    }
    for (const n of ['controller', ...workers]) {
      expect(s[n].depends_on.redis.condition, n).toBe('service_healthy');
      expect(s[n].environment.REDIS_URL, n).toBe('redis://redis:6379');
      expect(s[n].environment.LONGSHOT_GRANT_KEYS, `${n}: grant keys`).toBe(s.controller.environment.LONGSHOT_GRANT_KEYS);
    }
    for (const n of workers) {
      expect(flagValue(s[n].command, '--backend'), n).toBe('cpu');
      expect(flagValue(s[n].command, '--host'), n).toBe('0.0.0.0');
      expect(flagValue(s[n].command, '--advertise'), n).toBe(n);
    }
    expect(s.controller.ports).toContain('8080:8080');
    // Prometheus with deploy/prometheus/, reaching the controller (and through it the workers) by service name.
    expect(s.prometheus.volumes).toContain('./prometheus:/etc/prometheus:ro');
    const scrape = docsOf(PROMETHEUS_CONFIG)[0].scrape_configs as Obj[];
    expect(scrape.find((j) => j.job_name === 'longshot-controller')?.static_configs[0].targets).toEqual(['controller:8080']);
  });

  it('npm ci accepts the committed lock (every workspace, every platform\'s optional binaries)', () => {
    // --dry-run checks that package.json and the lock agree, as a real `npm ci` does first, and
    // changes nothing.
    const r = spawnSync('npm', ['ci', '--dry-run', '--offline', '--no-audit', '--no-fund'], { cwd: ROOT, encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
  });

  it('both images install with the checkout\'s own step: bootstrap.sh npm (npm ci on the committed lock, nothing else)', () => {
    const bootstrap = fs.readFileSync(path.join(ROOT, 'deploy/bootstrap.sh'), 'utf8');
    expect(bootstrap).toMatch(/quietly npm ci --no-audit --no-fund/);
    expect(bootstrap).not.toMatch(/npm install/);
    for (const image of ['controller', 'worker']) {
      const f = fs.readFileSync(path.join(ROOT, `deploy/${image}.Dockerfile`), 'utf8');
      expect(f, image).toMatch(/COPY package\.json package-lock\.json/);
      expect(f, image).toMatch(/RUN bash deploy\/bootstrap\.sh npm$/m);
      expect(f, image).toMatch(/bash deploy\/bootstrap\.sh addon/);
      expect(f, image).not.toMatch(/npm (ci|install) /);
      const ignore = fs.readFileSync(path.join(ROOT, `deploy/${image}.Dockerfile.dockerignore`), 'utf8').split('\n');
      for (const p of ['**/node_modules', 'out', '.git']) expect(ignore, `${image}: ${p} in the build context`).toContain(p);
    }
  });

  it('controller.Dockerfile: node:20-bookworm-slim, CPU-only addon, ffmpeg, non-root', () => {
    const f = fs.readFileSync(path.join(ROOT, 'deploy/controller.Dockerfile'), 'utf8');
    expect(f).toMatch(/ARG NODE_IMAGE=node:20-bookworm-slim/);
    expect(f).toMatch(/LONGSHOT_CUDA=0 bash deploy\/bootstrap\.sh addon/);
    expect(f).toMatch(/install -y --no-install-recommends ffmpeg/);
    // The final stage (the default target) is the controller and does not run as root.
    const last = f.slice(f.lastIndexOf('\nFROM '));
    expect(last).toMatch(/AS controller/);
    expect(last).toMatch(/^USER longshot$/m);
    expect(last).toMatch(/longshot-controller\.js/);
    for (const stage of f.split('\nFROM ').slice(1).filter((s) => /AS (controller|worker-cpu)/.test(s))) expect(stage).toMatch(/^USER longshot$/m);
  });

  /** A stage's own lines and its base stages', by stage name, for each Dockerfile. */
  const stagesOf = (file: string): Map<string, string> => {
    const own = new Map<string, { base: string; text: string }>();
    for (const chunk of fs.readFileSync(path.join(ROOT, file), 'utf8').split('\nFROM ').slice(1)) {
      const m = /^(\S+) AS (\S+)/.exec(chunk);
      if (m) own.set(m[2], { base: m[1], text: chunk });
    }
    const chain = (name: string): string => {
      const s = own.get(name);
      return s ? `${chain(s.base)}\n${s.text}` : '';
    };
    return new Map([...own.keys()].map((n) => [n, chain(n)]));
  };
  // The images that run a process: [Dockerfile, stage, entry script, health path].
  const images: [string, string, string, string][] = [
    ['deploy/controller.Dockerfile', 'controller', 'apps/controller/bin/longshot-controller.js', '/healthz'],
    ['deploy/controller.Dockerfile', 'worker-cpu', 'apps/worker/bin/longshot-worker.js', '/metrics'],
    ['deploy/worker.Dockerfile', 'runtime', 'apps/worker/bin/longshot-worker.js', '/metrics'],
  ];

  it.each(images)('%s %s: tini as PID 1, a HEALTHCHECK with node on a port the stage sets', (file, stage, entry, healthPath) => {
    const text = stagesOf(file).get(stage);
    expect(text, `${file}: stage ${stage}`).toBeDefined();
    expect(text).toMatch(/install -y --no-install-recommends tini/);
    const entrypoints = [...text!.matchAll(/^ENTRYPOINT (.*)$/gm)].map((m) => JSON.parse(m[1]) as string[]);
    expect(entrypoints.at(-1)).toEqual(['/usr/bin/tini', '--', 'node', entry]);
    const checks = [...text!.matchAll(/^HEALTHCHECK (.*)$/gm)].map((m) => m[1]);
    expect(checks).toHaveLength(1);
    const hc = /CMD node deploy\/healthcheck\.js "http:\/\/127\.0\.0\.1:\$\{(\w+)\}(\/\w+)"$/.exec(checks[0]);
    expect(hc, checks[0]).not.toBeNull();
    expect(hc![2]).toBe(healthPath);
    // The port variable is set in the image (to the port it exposes), and the probe is copied in.
    const port = new RegExp(`\\b${hc![1]}=(\\d+)`).exec(text!);
    expect(port, `${hc![1]} set in ${stage}`).not.toBeNull();
    expect(text).toMatch(new RegExp(`^EXPOSE .*\\b${port![1]}\\b`, 'm'));
    expect(text).toMatch(/^COPY deploy\/healthcheck\.js deploy\/$/m);
    for (const ignore of ['controller', 'worker']) expect(fs.readFileSync(path.join(ROOT, `deploy/${ignore}.Dockerfile.dockerignore`), 'utf8')).not.toMatch(/^deploy/m);
  });

  it('the controller serves /healthz, and deploy/healthcheck.js passes on 2xx and fails otherwise', async () => {
    expect(fs.readFileSync(path.join(ROOT, 'apps/controller/src/http/ops.controller.ts'), 'utf8')).toMatch(/@Get\('healthz'\)/);
    const { createServer } = await import('node:http');
    const server = createServer((req, res) => {
      res.writeHead(req.url === '/ok' ? 200 : 503);
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    const probe = (url: string) =>
      new Promise<number | null>((resolve) => {
        const child = execFile(process.execPath, [path.join(ROOT, 'deploy/healthcheck.js'), url]);
        child.on('exit', (code) => resolve(code));
      });
    try {
      expect(await probe(`http://127.0.0.1:${port}/ok`)).toBe(0);
      expect(await probe(`http://127.0.0.1:${port}/down`)).toBe(1);
    } finally {
      server.close();
    }
    // Nothing listening: unhealthy, not a hang.
    expect(await probe(`http://127.0.0.1:${port}/ok`)).toBe(1);
  });
});

describe('observability references only exported metrics', () => {
  let known: Known;
  beforeAll(async () => {
    known = await knownMetrics();
  });

  const rules = docsOf(RULES)[0];
  const allRules: Obj[] = rules.groups.flatMap((g: Obj) => g.rules);
  const recorded = new Set(allRules.filter((r) => r.record).map((r) => r.record as string));

  it('finds the metrics the code declares', () => {
    // Guards the grep itself: if these vanish, the source layout changed and the test must follow.
    for (const m of ['longshot_queue_jobs', 'longshot_job_duration_seconds', 'longshot_stage_forward_seconds', 'longshot_registry_heartbeat_failures_total', 'process_cpu_seconds_total']) {
      expect(known.kinds.has(m), m).toBe(true);
    }
    expect(known.kinds.get('longshot_job_duration_seconds')).toBe('histogram');
  });

  it('failovers are alerted on and on the dashboard', () => {
    expect(known.kinds.get('longshot_failovers_total')).toBe('counter');
    const alert = allRules.find((r) => r.alert === 'LongshotFailovers');
    expect(metricRefs(String(alert?.expr ?? '')).metrics).toContain('longshot_failovers_total');
    const exprs = [...fs.readFileSync(DASHBOARD, 'utf8').matchAll(/"expr":\s*"((?:[^"\\]|\\.)*)"/g)].map((m) => m[1]);
    expect(exprs.some((e) => metricRefs(e).metrics.includes('longshot_failovers_total'))).toBe(true);
  });

  it('Prometheus rules', () => {
    expect(allRules.filter((r) => r.alert).length).toBeGreaterThanOrEqual(5);
    for (const r of allRules) {
      const refs = metricRefs(String(r.expr));
      expect(refs.metrics.length + refs.recorded.length, `${r.record ?? r.alert} uses no metric`).toBeGreaterThan(0);
      for (const m of refs.metrics) expect(known.series.has(m), `${r.record ?? r.alert}: ${m} is not exported by the code`).toBe(true);
      for (const m of refs.recorded) expect(recorded.has(m), `${r.record ?? r.alert}: recording rule ${m} is not defined`).toBe(true);
    }
  });

  it('Grafana dashboard', () => {
    const dash = JSON.parse(fs.readFileSync(DASHBOARD, 'utf8'));
    const dsVar = dash.templating.list.find((v: Obj) => v.type === 'datasource');
    expect(dsVar?.query).toBe('prometheus');
    const panels: Obj[] = dash.panels.flatMap((p: Obj) => [p, ...(p.panels ?? [])]).filter((p: Obj) => p.type !== 'row');
    expect(panels.length).toBeGreaterThanOrEqual(10);
    const exprs: string[] = [];
    for (const p of panels) {
      expect(p.datasource?.uid, `panel ${p.title}: datasource must be the variable`).toBe(`\${${dsVar.name}}`);
      expect(p.targets?.length, `panel ${p.title}: no queries`).toBeGreaterThan(0);
      for (const t of p.targets) exprs.push(t.expr);
    }
    for (const v of dash.templating.list.filter((x: Obj) => x.type === 'query')) exprs.push(v.query.query ?? v.query);
    const used = new Set<string>();
    for (const e of exprs) {
      const refs = metricRefs(e);
      for (const m of refs.metrics) {
        expect(known.series.has(m), `dashboard: ${m} is not exported by the code (in ${e})`).toBe(true);
        used.add(m.replace(/_(bucket|sum|count)$/, ''));
      }
      // The dashboard must work without the recording rules loaded.
      expect(refs.recorded, `dashboard uses recording rules: ${e}`).toEqual([]);
    }
    for (const m of ['longshot_queue_jobs', 'longshot_job_duration_seconds', 'longshot_block_steps_total', 'longshot_workers_registered', 'longshot_worker_leases_active', 'longshot_stage_forward_seconds', 'longshot_activation_bytes_sent_total', 'longshot_activation_bytes_received_total', 'longshot_stage_input_wait_seconds_total', 'longshot_http_request_duration_seconds']) {
      expect(used.has(m), `dashboard has no panel on ${m}`).toBe(true);
    }
  });

  it('autoscaling queries', () => {
    const so = render(path.join(ROOT, 'k8s/base')).docs.find((d) => d.kind === 'ScaledObject')!;
    for (const t of so.spec.triggers.filter((x: Obj) => x.type === 'prometheus')) {
      for (const m of metricRefs(t.metadata.query).metrics) expect(known.series.has(m), `ScaledObject: ${m}`).toBe(true);
    }
  });

  it('prometheus.yml: the controller by address, the workers by HTTP SD from the route the controller serves; promtool check config', () => {
    const config = docsOf(PROMETHEUS_CONFIG)[0];
    expect(config.rule_files).toEqual(['rules.yml']);
    const jobs = new Map<string, Obj>((config.scrape_configs as Obj[]).map((j) => [j.job_name, j]));
    expect([...jobs.keys()].sort()).toEqual(['longshot-controller', 'longshot-workers']);
    const sd = jobs.get('longshot-workers')!.http_sd_configs;
    expect(sd).toHaveLength(1);
    const url = new URL(sd[0].url);
    expect(url.pathname).toBe('/v1/workers/prometheus-sd');
    expect(fs.readFileSync(path.join(ROOT, 'apps/controller/src/http/ops.controller.ts'), 'utf8')).toContain(`@Get('${url.pathname.slice(1)}')`);
    expect(jobs.get('longshot-controller')!.static_configs[0].targets).toEqual([url.host]);
    // The worker-down alert selects the job that discovers workers.
    const down = allRules.find((r) => r.alert === 'LongshotWorkerDown');
    expect(String(down?.expr)).toContain('up{job="longshot-workers"}');
    // Both controller endpoints are operator-only: the key comes from a file beside the config.
    for (const client of [jobs.get('longshot-controller')!, sd[0]]) expect(client.authorization).toEqual({ type: 'Bearer', credentials_file: 'secrets/operator-key' });
    // promtool checks that the key file exists: check a copy with a key in place (the checkout has none).
    const copy = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-promtool-'));
    try {
      fs.copyFileSync(PROMETHEUS_CONFIG, path.join(copy, 'prometheus.yml'));
      fs.copyFileSync(RULES, path.join(copy, 'rules.yml'));
      fs.mkdirSync(path.join(copy, 'secrets'));
      fs.writeFileSync(path.join(copy, 'secrets/operator-key'), 'lsk_example_key\n');
      const res = spawnSync('promtool', ['check', 'config', path.join(copy, 'prometheus.yml')], { encoding: 'utf8' });
      expect(res.status, `${res.stdout}\n${res.stderr}`).toBe(0);
    } finally {
      fs.rmSync(copy, { recursive: true, force: true });
    }
  });

  it('promtool check rules deploy/prometheus/rules.yml', () => {
    const probe = spawnSync('promtool', ['--version'], { encoding: 'utf8' });
    if (probe.error) {
      throw new Error('promtool is not installed: install the Debian package `prometheus` (apt-get install prometheus); deploy/bootstrap.sh should list it');
    }
    const res = spawnSync('promtool', ['check', 'rules', RULES], { encoding: 'utf8' });
    expect(res.status, `${res.stdout}\n${res.stderr}`).toBe(0);
  });

  it('promtool test rules deploy/prometheus/rules.test.yml (the alerts it covers fire, and only then)', () => {
    const tests = path.join(ROOT, 'deploy/prometheus/rules.test.yml');
    const covered = new Set((docsOf(tests)[0].tests as Obj[]).flatMap((t) => (t.alert_rule_test as Obj[]).map((a) => a.alertname as string)));
    expect([...covered]).toEqual(expect.arrayContaining(['LongshotFailovers', 'LongshotWorkerDown']));
    for (const name of covered) expect(allRules.some((r) => r.alert === name), name).toBe(true);
    const res = spawnSync('promtool', ['test', 'rules', tests], { encoding: 'utf8' });
    expect(res.status, `${res.stdout}\n${res.stderr}`).toBe(0);
  });
});
