// Docker HEALTHCHECK of the Longshot images: exits 0 when GET <url> answers 2xx within 3 s, else 1.
// Run with the image's own node (the slim and CUDA bases ship no curl or wget):
//   node deploy/healthcheck.js http://127.0.0.1:8080/healthz
'use strict';
const url = process.argv[2];
if (!url) {
  process.stderr.write('usage: node deploy/healthcheck.js URL\n');
  process.exit(2);
}
fetch(url, { signal: AbortSignal.timeout(3000) }).then(
  (res) => process.exit(res.ok ? 0 : 1),
  (err) => {
    process.stderr.write(`${url}: ${err.message}\n`);
    process.exit(1);
  },
);
