/**
 * The link each hop of a job crosses, from where its two stages run (docs/dataplane.md,
 * "Placement"). Workers register their host, GPU, NVLink domain and network link; leasing puts
 * consecutive stages close together; this turns the placement a job got into one link per hop
 * (bandwidth and latency) that the latency model (`jobTiming`) uses instead of the profile's one
 * global link. Pure: callers hand in what the workers registered.
 */

/** What a hop crosses, nearest first. */
export type LinkKind = 'device' | 'nvlink' | 'host' | 'network';
export const LINK_KINDS: readonly LinkKind[] = ['device', 'nvlink', 'host', 'network'];

export interface Link {
  readonly bytesPerSecond: number;
  readonly latencySeconds: number;
}

/** One hop's modelled link, and why it is that one. */
export interface HopLink extends Link {
  readonly kind: LinkKind;
}

/**
 * The links of a hardware profile by placement (a HardwareProfile's `links`):
 * - `device`: both stages on one GPU (a device-to-device copy);
 * - `nvlink`: both in one NVLink domain (one HGX node's NVSwitch, or a multi-node NVLink rack);
 * - `host`: one host but no shared NVLink domain (through host memory: shared memory, PCIe);
 * - `network`: different hosts, over the network, when neither worker registered its link speed.
 */
export type ProfileLinks = Readonly<Record<LinkKind, Link>>;

/** Where a stage's worker runs, as it registered; null: not reported. */
export interface StagePlacement {
  readonly host: string | null;
  readonly nvlinkDomain: string | null;
  /** The GPU's identity (its UUID); null on a CPU worker. */
  readonly gpu: string | null;
  /** Its network link, bytes per second; null: the profile's network link. */
  readonly nicBytesPerSecond: number | null;
}

const same = (a: string | null, b: string | null): boolean => a !== null && a !== '' && a === b;

/**
 * The link between two stages, nearest first: one GPU, one NVLink domain (which may span hosts),
 * one host, otherwise the network at the smaller of the two registered link speeds (the
 * profile's network link when neither registered one), with the profile's network latency.
 */
export function hopLink(from: StagePlacement, to: StagePlacement, links: ProfileLinks): HopLink {
  if (same(from.host, to.host) && same(from.gpu, to.gpu)) return { kind: 'device', ...links.device };
  if (same(from.nvlinkDomain, to.nvlinkDomain)) return { kind: 'nvlink', ...links.nvlink };
  if (same(from.host, to.host)) return { kind: 'host', ...links.host };
  const nics = [from.nicBytesPerSecond, to.nicBytesPerSecond].filter((b): b is number => b !== null);
  return { kind: 'network', bytesPerSecond: nics.length > 0 ? Math.min(...nics) : links.network.bytesPerSecond, latencySeconds: links.network.latencySeconds };
}

/**
 * The links of a job's hops in ring order, as `jobTiming` takes them: stage k to k + 1, and the
 * last entry tail to head; none for one stage.
 */
export function placementLinks(stages: readonly StagePlacement[], links: ProfileLinks): HopLink[] {
  const K = stages.length;
  if (K <= 1) return [];
  return stages.map((s, k) => hopLink(s, stages[(k + 1) % K], links));
}

/** "7 nvlink + 1 network": how many hops cross each kind of link. */
export function describeLinks(hops: readonly HopLink[]): string {
  return LINK_KINDS.map((kind) => [kind, hops.filter((h) => h.kind === kind).length] as const)
    .filter(([, n]) => n > 0)
    .map(([kind, n]) => `${n} ${kind}`)
    .join(' + ');
}
