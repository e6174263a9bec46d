#!/usr/bin/env bash
# Makes a checkout runnable: system packages, npm dependencies, the native addon. `npm run demo`
# and `npm test` call it first, so a fresh machine needs nothing else. Each step is skipped when
# already done, so repeated runs cost about a second.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '[setup] %s\n' "$*" >&2; }

# --- system packages (Debian names) -------------------------------------------------------------
missing=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
# promtool checks the shipped Prometheus rules in the test suite.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# OpenBLAS is only the kernel benchmark's baseline (loaded at run time), never a dependency of the engine.
ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so\.0' || missing+=(libopenblas-dev)
command -v g++ >/dev/null 2>&1 && command -v make >/dev/null 2>&1 || missing+=(g++ make)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)  # the native driver (deploy/gpu-check.sh)
command -v python3 >/dev/null 2>&1 || missing+=(python3)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  else
    say "missing system packages: ${missing[*]}"
    say "install them with: sudo apt-get install ${missing[*]}"
    exit 1
  fi
fi

# --- npm dependencies ----------------------------------------------------------------------------
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "npm ci"
  if ! npm ci --no-audit --no-fund >&2; then
    # Some registries (mirrors) lack other platforms' optional binaries (e.g. rollup's); npm then
    # leaves them out of the lock and `npm ci` refuses it. `npm install` installs the same locked
    # versions and tolerates the gap.
    say "npm ci refused the lock file; installing the locked versions with npm install"
    npm install --no-audit --no-fund >&2
  fi
fi

# --- native addon ---------------------------------------------------------------------------------
addon=libs/engine/build/Release/longshot_engine.node
if [ ! -f "$addon" ] || [ -n "$(find libs/engine/binding.gyp libs/engine/native -newer "$addon" -print -quit 2>/dev/null)" ]; then
  say "building the native engine (libs/engine)"
  npm run --silent build --workspace @longshot/engine >&2
fi
