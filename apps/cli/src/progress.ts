/** What the progress line shows: a phase, and for a phase with a known amount of work, a bar. */
export interface ProgressState {
  /** 'starting the cluster', 'loading weights', 'encoding the prompt', 'denoising job-…', 'decoding'. */
  readonly label: string;
  readonly done?: number;
  readonly total?: number;
  /** What is counted: 'block-steps', 'stages'. */
  readonly unit?: string;
  readonly elapsedSeconds: number;
  /** Seconds left; null when not known yet. Only shown with a bar. */
  readonly etaSeconds?: number | null;
}

export const PROGRESS_COLUMNS = 80;
const MIN_BAR = 10;

/** 75 s -> '1m15s', 3725 s -> '1h02m'. */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** Cuts `text` to `width` columns, marking the cut with an ellipsis. */
function fit(text: string, width: number): string {
  if (text.length <= width) return text;
  return width <= 1 ? text.slice(0, Math.max(0, width)) : `${text.slice(0, width - 1)}…`;
}

/**
 * One progress line of at most `columns` characters, whatever the label (a long job id or model
 * path is shortened, never wrapped):
 *   denoising job-1a2b3c4d5e6f [#######.........] 45% 90/200 block-steps eta 1m12s
 *   starting the cluster 3s
 */
export function formatProgress(state: ProgressState, columns = PROGRESS_COLUMNS): string {
  const label = state.label.replace(/\s+/g, ' ');
  if (state.total === undefined || state.done === undefined) {
    const tail = ` ${formatDuration(state.elapsedSeconds)}`;
    return `${fit(label, columns - tail.length)}${tail}`;
  }
  const total = Math.max(0, state.total);
  const done = Math.min(Math.max(0, state.done), total);
  const fraction = total === 0 ? 1 : done / total;
  const eta = done >= total ? `in ${formatDuration(state.elapsedSeconds)}` : state.etaSeconds == null ? 'eta ?' : `eta ${formatDuration(state.etaSeconds)}`;
  const counts = `${done}/${total}${state.unit ? ` ${state.unit}` : ''}`;
  let tail = ` ${String(Math.floor(fraction * 100)).padStart(3)}% ${counts} ${eta}`;
  if (tail.length + MIN_BAR + 3 > columns) tail = ` ${String(Math.floor(fraction * 100)).padStart(3)}% ${eta}`;
  const room = columns - tail.length - 3; // ' [' + ']'
  const labelWidth = Math.min(label.length, Math.max(0, room - MIN_BAR));
  const barWidth = Math.max(1, Math.min(40, room - labelWidth));
  const filled = Math.round(fraction * barWidth);
  const line = `${fit(label, labelWidth)} [${'#'.repeat(filled)}${'.'.repeat(barWidth - filled)}]${tail}`;
  return line.length > columns ? fit(line, columns) : line;
}

/**
 * The progress line on stderr (stdout stays clean for --json). On a terminal one line is redrawn
 * in place; otherwise a line is printed when a phase starts, every tenth of a bar and at its end,
 * so logs still show how far a job got.
 */
export class Progress {
  private label = '';
  private total: number | undefined;
  private unit: string | undefined;
  private done = 0;
  private started = 0;
  private lastDecile = -1;
  private lastDraw = 0;
  private open = false;

  constructor(
    private readonly stream: NodeJS.WritableStream & { isTTY?: boolean; columns?: number },
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** A phase without a known amount of work (starting the cluster, encoding the prompt, decoding). */
  phase(label: string): void {
    this.begin(label, undefined, undefined);
  }

  /** A phase with a bar: `total` units to do. */
  start(label: string, total: number, unit?: string): void {
    this.begin(label, total, unit);
  }

  tick(n = 1): void {
    this.set(this.done + n);
  }

  set(done: number): void {
    this.done = done;
    if (this.stream.isTTY) {
      if (this.now() - this.lastDraw >= 100 || done >= (this.total ?? Infinity)) this.draw();
      return;
    }
    const decile = this.total ? Math.floor((10 * this.done) / Math.max(1, this.total)) : 0;
    if (decile !== this.lastDecile && decile < 10) {
      this.lastDecile = decile;
      if (decile > 0) this.stream.write(`${this.line(PROGRESS_COLUMNS)}\n`);
    }
  }

  /** Ends the current phase (its final line stays on screen). */
  stop(): void {
    if (!this.open) return;
    this.open = false;
    if (this.stream.isTTY) {
      this.draw();
      this.stream.write('\n');
    } else if (this.total !== undefined) this.stream.write(`${this.line(PROGRESS_COLUMNS)}\n`);
  }

  private begin(label: string, total: number | undefined, unit: string | undefined): void {
    this.stop();
    Object.assign(this, { label, total, unit, done: 0, started: this.now(), lastDecile: -1, open: true });
    if (this.stream.isTTY) this.draw();
    else this.stream.write(`${this.line(PROGRESS_COLUMNS)}\n`);
  }

  private line(columns: number): string {
    const elapsedSeconds = (this.now() - this.started) / 1000;
    const etaSeconds = this.total !== undefined && this.done > 0 ? (elapsedSeconds * (this.total - this.done)) / this.done : null;
    return formatProgress({ label: this.label, done: this.total === undefined ? undefined : this.done, total: this.total, unit: this.unit, elapsedSeconds, etaSeconds }, columns);
  }

  private draw(): void {
    this.lastDraw = this.now();
    const columns = Math.min(PROGRESS_COLUMNS, (this.stream.columns ?? PROGRESS_COLUMNS) - 1);
    this.stream.write(`\r${this.line(columns)}\x1b[K`);
  }
}
