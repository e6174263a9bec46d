#!/usr/bin/env node
// Build configuration of the CUDA backend, read by binding.gyp: `node cuda_config.js <what>`
// prints one value.
//   enabled  1 when the addon is built with CUDA: LONGSHOT_CUDA=1 forces it (and fails here,
//            loudly, if no toolkit is found), LONGSHOT_CUDA=0 forbids it, otherwise it follows
//            whether nvcc can be found.
//   nvcc     the nvcc to run.
//   home     the toolkit root (include/cuda_runtime_api.h), for the host compiler.
//   libdir   the directory holding libcudart_static.a.
// The toolkit is looked for through CUDA_HOME / CUDA_PATH, nvcc on PATH (a symlink or wrapper
// under bin/ of the toolkit), then /usr/local/cuda.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

function onPath(name) {
  for (const dir of (process.env.PATH || '').split(path.delimiter)) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return null;
}

function isToolkit(dir) {
  return !!dir && fs.existsSync(path.join(dir, 'include', 'cuda_runtime_api.h')) && fs.existsSync(path.join(dir, 'bin', 'nvcc'));
}

function findHome() {
  const candidates = [process.env.CUDA_HOME, process.env.CUDA_PATH];
  const nvcc = onPath('nvcc');
  if (nvcc) {
    candidates.push(path.dirname(path.dirname(fs.realpathSync(nvcc))));
    // A wrapper script (`exec /opt/cuda-X/bin/nvcc "$@"`) names the real one.
    try {
      const m = /(\/\S+)\/bin\/nvcc\b/.exec(fs.readFileSync(nvcc, 'utf8').slice(0, 4096));
      if (m) candidates.push(m[1]);
    } catch {
      // binary, or unreadable
    }
  }
  candidates.push('/usr/local/cuda');
  return candidates.find(isToolkit) || null;
}

function libDir(home) {
  const dirs = ['lib64', 'lib', path.join('targets', `${process.arch === 'arm64' ? 'sbsa' : 'x86_64'}-linux`, 'lib')];
  const found = dirs.map((d) => path.join(home, d)).find((d) => fs.existsSync(path.join(d, 'libcudart_static.a')));
  return found || path.join(home, 'lib64');
}

const mode = process.env.LONGSHOT_CUDA;
const home = mode === '0' ? null : findHome();
if (mode === '1' && !home) {
  console.error('LONGSHOT_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME, or put nvcc on PATH)');
  process.exit(1);
}
const what = process.argv[2];
if (what === 'enabled') console.log(home ? 1 : 0);
else if (what === 'nvcc') console.log(home ? path.join(home, 'bin', 'nvcc') : '');
else if (what === 'home') console.log(home || '');
else if (what === 'libdir') console.log(home ? libDir(home) : '');
else {
  console.error('usage: cuda_config.js enabled|nvcc|home|libdir');
  process.exit(2);
}
