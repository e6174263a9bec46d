/** Prometheus text pages in the end-to-end suites. */

/**
 * The value of one sample line (`name{labels} value`) of a Prometheus text page. A sample the
 * page lacks is an error (a counter that was never exported must not read as 0), unless `absent`
 * says what it stands for (labelled series appear with their first event).
 */
export function metricValue(page: string, sample: string, absent?: number): number {
  const line = page.split('\n').find((l) => l.startsWith(`${sample} `));
  if (line) return Number(line.slice(sample.length + 1));
  if (absent === undefined) throw new Error(`the metrics page has no sample ${sample}`);
  return absent;
}
