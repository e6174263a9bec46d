import * as fs from 'node:fs';
import * as path from 'node:path';
import { Controller, Get, NotFoundException, Param, Res } from '@nestjs/common';
import { ApiExcludeController } from '@nestjs/swagger';
import type { Response } from 'express';
import { Public } from '../auth';

/*
 * The web console (docs/console.md): static HTML, ES modules and CSS from apps/controller/console,
 * served at `/` and `/console/<file>`. No build step: the files are sent as they are in the
 * checkout, read once when the controller starts. Not part of the API, so not in the OpenAPI
 * document.
 */

/** The console's directory in the checkout (and in the controller image). */
export const CONSOLE_DIR = path.resolve(__dirname, '../../console');

/** Content types by file extension: the kinds of file the console is made of. */
const CONTENT_TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
};

/**
 * Scripts, styles and media from this origin only; no inline script or style, no plugin, no
 * framing; fetches (the API, SSE, previews, the video) go to this origin alone.
 */
export const CONSOLE_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "media-src 'self'",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

interface Asset {
  readonly type: string;
  readonly body: Buffer;
}

/** The console's files by name: the regular files of CONSOLE_DIR with a known extension. */
function loadAssets(dir: string): ReadonlyMap<string, Asset> {
  const assets = new Map<string, Asset>();
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const type = CONTENT_TYPES[path.extname(entry.name)];
    if (entry.isFile() && type) assets.set(entry.name, { type, body: fs.readFileSync(path.join(dir, entry.name)) });
  }
  return assets;
}

@ApiExcludeController()
@Public()
@Controller()
export class ConsoleController {
  private readonly assets = loadAssets(CONSOLE_DIR);

  @Get()
  index(@Res() res: Response): void {
    this.send(res, 'index.html');
  }

  @Get('console/:file')
  asset(@Param('file') file: string, @Res() res: Response): void {
    this.send(res, file);
  }

  private send(res: Response, name: string): void {
    const asset = this.assets.get(name);
    if (!asset) throw new NotFoundException({ error: 'not_found', message: 'no such console file' });
    res
      .status(200)
      .set({
        'Content-Type': asset.type,
        'Content-Security-Policy': CONSOLE_CSP,
        'X-Content-Type-Options': 'nosniff',
        'Referrer-Policy': 'no-referrer',
        'Cache-Control': 'no-cache',
      })
      .send(asset.body);
  }
}
