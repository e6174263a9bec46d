import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';

/** PEM contents of one party's certificate, its key, and the CA every party's certificate is signed by. */
export interface TlsFiles {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca: Buffer;
}

/**
 * mTLS between drivers and workers and between workers: the server requires a client certificate
 * signed by the CA, and clients present theirs. null: plaintext (inside a trusted network only).
 */
export function tlsCredentials(tls: TlsFiles | null): { server: grpc.ServerCredentials; client: grpc.ChannelCredentials } {
  if (!tls) return { server: grpc.ServerCredentials.createInsecure(), client: grpc.credentials.createInsecure() };
  return {
    server: grpc.ServerCredentials.createSsl(tls.ca, [{ cert_chain: tls.cert, private_key: tls.key }], true),
    client: grpc.credentials.createSsl(tls.ca, tls.key, tls.cert),
  };
}

/**
 * Reads the three PEM files named by a config (flags or environment, in the app's config module):
 * all three or none (null). Errors name the setting, not the file's contents.
 */
export function loadTlsFiles(paths: { cert?: string; key?: string; ca?: string }, names = { cert: '--tls-cert', key: '--tls-key', ca: '--tls-ca' }): TlsFiles | null {
  const given = (['cert', 'key', 'ca'] as const).filter((k) => paths[k]);
  if (given.length === 0) return null;
  if (given.length !== 3) throw new Error(`${names.cert}, ${names.key} and ${names.ca}: give all three or none`);
  const read = (k: 'cert' | 'key' | 'ca'): Buffer => {
    try {
      return fs.readFileSync(paths[k]!);
    } catch (e) {
      throw new Error(`${names[k]}: cannot read ${paths[k]}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  };
  return { cert: read('cert'), key: read('key'), ca: read('ca') };
}
