/**
 * Video output through the system ffmpeg/ffprobe (Debian package `ffmpeg`): frames stream as
 * raw rgb24 into an ffmpeg child that encodes H.264 MP4, so no codec lives in this process and
 * a long video never sits in memory whole.
 */
import { ChildProcessWithoutNullStreams, execFile, spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

/** The Debian package that provides each binary we shell out to. */
const DEBIAN_PACKAGE: Readonly<Record<string, string>> = { ffmpeg: 'ffmpeg', ffprobe: 'ffmpeg' };

const resolved = new Map<string, string>();

/**
 * Absolute path of an executable on PATH; throws naming the Debian package when it is absent,
 * which is the usual fix on our images.
 */
export function requireBinary(name: string): string {
  const hit = resolved.get(name);
  if (hit) return hit;
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter(Boolean);
  for (const dir of dirs) {
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      if (fs.statSync(p).isFile()) {
        resolved.set(name, p);
        return p;
      }
    } catch {
      // Not in this directory; keep looking.
    }
  }
  const pkg = DEBIAN_PACKAGE[name] ?? name;
  throw new Error(`'${name}' not found on PATH (${dirs.join(path.delimiter) || 'empty'}); install the Debian package '${pkg}' (apt-get install -y ${pkg})`);
}

/** The last `max` characters of a process's stderr, for error messages. */
function tail(text: string, max = 2000): string {
  const t = text.trim();
  return t.length > max ? `...${t.slice(t.length - max)}` : t;
}

export interface Mp4WriterOptions {
  readonly width: number;
  readonly height: number;
  readonly fps: number;
  /** x264 constant rate factor; default 18 (visually near-lossless). */
  readonly crf?: number;
  /** x264 preset; default veryfast. */
  readonly preset?: string;
}

/**
 * Encodes rgb24 frames to an H.264 MP4. Output goes to a temp file beside `file` and is renamed
 * into place by finish(), so a crashed or aborted render never leaves a half-written video
 * under the final name.
 */
export class Mp4Writer {
  readonly file: string;
  readonly width: number;
  readonly height: number;
  readonly fps: number;
  private readonly tmp: string;
  private readonly proc: ChildProcessWithoutNullStreams;
  private stderr = '';
  private framesWritten = 0;
  private state: 'open' | 'finishing' | 'done' | 'failed' = 'open';
  private readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>;
  private stdinError: Error | null = null;

  constructor(file: string, opts: Mp4WriterOptions) {
    const { width, height, fps } = opts;
    if (!Number.isInteger(width) || !Number.isInteger(height) || width < 2 || height < 2) {
      throw new Error(`Mp4Writer ${file}: width and height must be integers >= 2, got ${width}x${height}`);
    }
    if (width % 2 !== 0 || height % 2 !== 0) {
      throw new Error(`Mp4Writer ${file}: width and height must be even for yuv420p H.264, got ${width}x${height}`);
    }
    if (!(fps > 0) || !Number.isFinite(fps)) throw new Error(`Mp4Writer ${file}: fps must be a positive number, got ${fps}`);
    const crf = opts.crf ?? 18;
    if (!Number.isFinite(crf) || crf < 0 || crf > 51) throw new Error(`Mp4Writer ${file}: crf must be in [0, 51], got ${crf}`);
    const ffmpeg = requireBinary('ffmpeg');
    this.file = file;
    this.width = width;
    this.height = height;
    this.fps = fps;
    this.tmp = path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${Math.random().toString(36).slice(2, 10)}.mp4`);
    const args = [
      '-hide_banner', '-loglevel', 'error', '-y',
      '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', `${width}x${height}`, '-r', String(fps), '-i', '-',
      '-c:v', 'libx264', '-pix_fmt', 'yuv420p', '-crf', String(crf), '-preset', opts.preset ?? 'veryfast',
      '-movflags', '+faststart', '-f', 'mp4', this.tmp,
    ];
    this.proc = spawn(ffmpeg, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.proc.stdout.resume();
    this.proc.stderr.setEncoding('utf8');
    this.proc.stderr.on('data', (d: string) => {
      // Bounded: only the tail is ever reported.
      this.stderr = (this.stderr + d).slice(-16384);
    });
    // EPIPE when ffmpeg dies early surfaces here; write()/finish() report it with stderr.
    this.proc.stdin.on('error', (e) => {
      this.stdinError = e;
    });
    this.exited = new Promise((resolve) => {
      this.proc.on('error', (error) => resolve({ code: null, signal: null, error }));
      this.proc.on('close', (code, signal) => resolve({ code, signal }));
    });
  }

  get frames(): number {
    return this.framesWritten;
  }

  /** Bytes of one frame. */
  get frameBytes(): number {
    return this.width * this.height * 3;
  }

  /**
   * Queues one or more whole rgb24 frames ([n, height, width, 3]). The data is copied, so the
   * caller may reuse its buffer; resolves once ffmpeg has room for more (backpressure).
   */
  async write(rgb: Uint8Array): Promise<void> {
    if (this.state !== 'open') throw new Error(`Mp4Writer ${this.file}: write() after finish() or abort() (state ${this.state})`);
    if (rgb.length === 0 || rgb.length % this.frameBytes !== 0) {
      throw new Error(`Mp4Writer ${this.file}: ${rgb.length} bytes is not a whole number of ${this.width}x${this.height} rgb24 frames (${this.frameBytes} bytes each)`);
    }
    if (this.proc.exitCode !== null || this.stdinError) throw await this.failure('ffmpeg stopped accepting frames');
    const ok = this.proc.stdin.write(Buffer.from(rgb));
    this.framesWritten += rgb.length / this.frameBytes;
    if (!ok) {
      const drained = new Promise<boolean>((resolve) => this.proc.stdin.once('drain', () => resolve(true)));
      const died = this.exited.then(() => false);
      if (!(await Promise.race([drained, died]))) throw await this.failure('ffmpeg exited while frames were pending');
    }
  }

  /** Closes the stream, waits for ffmpeg and renames the MP4 into place. */
  async finish(): Promise<void> {
    if (this.state !== 'open') throw new Error(`Mp4Writer ${this.file}: finish() called twice or after abort`);
    this.state = 'finishing';
    if (this.framesWritten === 0) {
      await this.abort();
      throw new Error(`Mp4Writer ${this.file}: no frames were written`);
    }
    this.proc.stdin.end();
    const r = await this.exited;
    if (r.error || r.code !== 0) {
      this.state = 'failed';
      fs.rmSync(this.tmp, { force: true });
      throw this.describe(r, 'encoding failed');
    }
    try {
      fs.renameSync(this.tmp, this.file);
    } catch (e) {
      this.state = 'failed';
      fs.rmSync(this.tmp, { force: true });
      throw e;
    }
    this.state = 'done';
  }

  /** Stops ffmpeg and removes the temp file; the final path is never created. */
  async abort(): Promise<void> {
    if (this.state === 'done') return;
    this.state = 'failed';
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
    await this.exited;
    fs.rmSync(this.tmp, { force: true });
  }

  private async failure(what: string): Promise<Error> {
    const r = await this.exited;
    this.state = 'failed';
    fs.rmSync(this.tmp, { force: true });
    return this.describe(r, what);
  }

  private describe(r: { code: number | null; signal: NodeJS.Signals | null; error?: Error }, what: string): Error {
    const how = r.error ? `spawn error: ${r.error.message}` : r.signal ? `killed by ${r.signal}` : `exit code ${r.code}`;
    const err = tail(this.stderr) || (this.stdinError ? this.stdinError.message : 'no stderr');
    return new Error(`Mp4Writer ${this.file}: ${what} (ffmpeg ${how}): ${err}`);
  }
}

function run(bin: string, args: string[], input?: Buffer): Promise<{ stdout: Buffer; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(bin, args, { encoding: 'buffer', maxBuffer: 256 * 1024 * 1024 }, (error, stdout, stderr) => {
      if (error) {
        reject(new Error(`${path.basename(bin)} ${args.join(' ')} failed: ${tail(stderr.toString('utf8')) || error.message}`));
      } else {
        resolve({ stdout, stderr: stderr.toString('utf8') });
      }
    });
    if (input) {
      child.stdin?.on('error', () => {
        // The exit status and stderr above carry the real reason.
      });
      child.stdin?.end(input);
    }
  });
}

export interface VideoInfo {
  /** Frames actually decoded (not the container's claim). */
  readonly frames: number;
  readonly width: number;
  readonly height: number;
  readonly fps: number;
}

/** Decodes the first video stream with ffprobe and reports its real frame count, size and rate. */
export async function probeVideo(file: string): Promise<VideoInfo> {
  const ffprobe = requireBinary('ffprobe');
  if (!fs.existsSync(file)) throw new Error(`probeVideo: ${file} does not exist`);
  const { stdout } = await run(ffprobe, [
    '-v', 'error', '-count_frames', '-select_streams', 'v:0',
    '-show_entries', 'stream=nb_read_frames,width,height,r_frame_rate', '-of', 'json', file,
  ]);
  let parsed: { streams?: { nb_read_frames?: string; width?: number; height?: number; r_frame_rate?: string }[] };
  try {
    parsed = JSON.parse(stdout.toString('utf8'));
  } catch {
    throw new Error(`probeVideo ${file}: ffprobe output is not JSON`);
  }
  const s = parsed.streams?.[0];
  if (!s) throw new Error(`probeVideo ${file}: no video stream`);
  const frames = Number(s.nb_read_frames);
  if (!Number.isInteger(frames)) throw new Error(`probeVideo ${file}: ffprobe did not count frames (nb_read_frames=${s.nb_read_frames})`);
  const [num, den] = (s.r_frame_rate ?? '0/1').split('/').map(Number);
  return { frames, width: s.width ?? 0, height: s.height ?? 0, fps: den ? num / den : num };
}

export async function probeFrameCount(file: string): Promise<number> {
  return (await probeVideo(file)).frames;
}

/** One rgb24 frame -> JPEG bytes (for block previews in the UI). quality: ffmpeg -q:v, 2 best .. 31. */
export async function previewJpeg(rgb: Uint8Array, width: number, height: number, quality = 4): Promise<Buffer> {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new Error(`previewJpeg: bad size ${width}x${height}`);
  }
  if (rgb.length < width * height * 3) throw new Error(`previewJpeg: ${rgb.length} bytes, need ${width * height * 3} for one ${width}x${height} rgb24 frame`);
  const ffmpeg = requireBinary('ffmpeg');
  const frame = Buffer.from(rgb.buffer, rgb.byteOffset, width * height * 3);
  const { stdout } = await run(
    ffmpeg,
    ['-hide_banner', '-loglevel', 'error', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', `${width}x${height}`, '-i', '-',
      '-frames:v', '1', '-c:v', 'mjpeg', '-pix_fmt', 'yuvj444p', '-q:v', String(quality), '-f', 'image2pipe', '-'],
    frame,
  );
  if (stdout.length < 4 || stdout[0] !== 0xff || stdout[1] !== 0xd8) throw new Error('previewJpeg: ffmpeg did not produce a JPEG');
  return stdout;
}

/** Every frame of the first video stream as rgb24 bytes [frames, height, width, 3]. */
export async function readRgbFrames(file: string): Promise<{ data: Uint8Array; frames: number; width: number; height: number }> {
  // The size from the stream header; the frame count follows from the bytes (probeVideo would
  // decode the whole stream a second time to count them).
  const { stdout: probe } = await run(requireBinary('ffprobe'), ['-v', 'error', '-select_streams', 'v:0', '-show_entries', 'stream=width,height', '-of', 'json', file]);
  let info: { width: number; height: number };
  try {
    const s = (JSON.parse(probe.toString('utf8')) as { streams?: { width?: number; height?: number }[] }).streams?.[0];
    info = { width: s?.width ?? 0, height: s?.height ?? 0 };
  } catch {
    throw new Error(`readRgbFrames ${file}: ffprobe output is not JSON`);
  }
  const ffmpeg = requireBinary('ffmpeg');
  const { stdout } = await run(ffmpeg, ['-v', 'error', '-i', file, '-map', '0:v:0', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-']);
  const frameBytes = info.width * info.height * 3;
  if (frameBytes === 0 || stdout.length % frameBytes !== 0) throw new Error(`readRgbFrames ${file}: ${stdout.length} bytes are not whole ${info.width}x${info.height} frames`);
  return { data: new Uint8Array(stdout.buffer, stdout.byteOffset, stdout.length), frames: stdout.length / frameBytes, width: info.width, height: info.height };
}
