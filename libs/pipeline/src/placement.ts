import type { WorkerInfo, WorkerTopology } from '@longshot/cache';
import type { StagePlacement } from '@longshot/planner';

/** The host a worker's data plane reports (workers without one are each a host of their own). */
const hostOf = (w: WorkerInfo): string => w.dataPlane?.hostId || `worker:${w.id}`;

/** The NVLink domain a worker registered; without one, its host is a domain of its own. */
const domainOf = (w: WorkerInfo): string => (w.topology?.nvlinkDomain ? `nvlink:${w.topology.nvlinkDomain}` : `host:${hostOf(w)}`);

/**
 * `ids` grouped by `groupOf`, groups in the order a job of `count` stages should take them:
 * those that can take every stage first, NVLink domains before hosts without one, the least busy
 * first; then the others by how many candidates they have; within a group the candidates keep
 * their order.
 */
function rankGroups(ids: readonly string[], info: ReadonlyMap<string, WorkerInfo>, count: number, groupOf: (w: WorkerInfo) => string): string[][] {
  const groups = new Map<string, string[]>();
  for (const id of ids) {
    const g = groupOf(info.get(id)!);
    groups.set(g, [...(groups.get(g) ?? []), id]);
  }
  const busy = (members: string[]) => members.slice(0, count).reduce((n, id) => n + info.get(id)!.sessions, 0);
  return [...groups.entries()]
    .sort(([ga, a], [gb, b]) => {
      const fitsA = a.length >= count;
      const fitsB = b.length >= count;
      if (fitsA !== fitsB) return fitsA ? -1 : 1;
      const nvlinkA = ga.startsWith('nvlink:');
      if (nvlinkA !== gb.startsWith('nvlink:')) return nvlinkA ? -1 : 1;
      if (!fitsA && a.length !== b.length) return b.length - a.length;
      return busy(a) - busy(b) || ga.localeCompare(gb);
    })
    .map(([, members]) => members);
}

/**
 * Topology-aware placement (docs/dataplane.md "Placement"): `ids` (candidates, least busy first)
 * reordered so that a job's `count` stages land in as few NVLink domains as possible, and within
 * a domain on as few hosts as possible, consecutively. Leases are taken in this order and stages
 * assigned in it, so consecutive stages share an NVLink domain (their hop can use NVLink) or else
 * a host (shared memory); only the hops between those cross the network. A worker without an
 * NVLink domain counts as its host's; one without a host id as a host of its own.
 */
export function placeByTopology(ids: readonly string[], info: ReadonlyMap<string, WorkerInfo>, count: number): string[] {
  return rankGroups(ids, info, count, domainOf).flatMap((domain) => rankGroups(domain, info, Math.min(count, domain.length), hostOf).flat());
}

/** A leased worker's placement as the planner takes it (links.ts), from what it registered. */
export function stagePlacement(w: { readonly dataPlane?: { readonly hostId: string }; readonly topology?: WorkerTopology }): StagePlacement {
  const t = w.topology;
  return {
    host: w.dataPlane?.hostId || null,
    nvlinkDomain: t?.nvlinkDomain || null,
    gpu: t?.gpu ? t.gpu.uuid || `${w.dataPlane?.hostId ?? ''}#${t.gpu.index}` : null,
    nicBytesPerSecond: t && t.linkGbps > 0 ? (t.linkGbps * 1e9) / 8 : null,
  };
}
