import { SingleBar } from 'cli-progress';

/**
 * A progress bar on stderr (stdout stays clean for --json). Without a terminal it prints a line
 * at start, every tenth of the way and at the end, so logs still show how far a job got.
 */
export class Progress {
  private bar: SingleBar | null = null;
  private total = 0;
  private done = 0;
  private lastDecile = -1;
  private label = '';

  constructor(private readonly stream: NodeJS.WriteStream) {}

  start(label: string, total: number): void {
    this.total = total;
    this.done = 0;
    this.label = label;
    if (this.stream.isTTY) {
      this.bar = new SingleBar({ stream: this.stream, format: `${label} [{bar}] {percentage}% | {value}/{total} block-steps | eta {eta_formatted}`, hideCursor: true });
      this.bar.start(total, 0);
    } else {
      this.stream.write(`${label}: 0/${total} block-steps\n`);
    }
  }

  tick(n = 1): void {
    this.set(this.done + n);
  }

  set(done: number): void {
    this.done = done;
    if (this.bar) {
      this.bar.update(this.done);
      return;
    }
    const decile = Math.floor((10 * this.done) / Math.max(1, this.total));
    if (decile !== this.lastDecile && decile < 10) {
      this.lastDecile = decile;
      if (decile > 0) this.stream.write(`${this.label}: ${this.done}/${this.total} block-steps\n`);
    }
  }

  stop(): void {
    if (this.bar) this.bar.stop();
    else if (this.total > 0) this.stream.write(`${this.label}: ${this.done}/${this.total} block-steps\n`);
    this.bar = null;
  }
}
