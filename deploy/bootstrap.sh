#!/usr/bin/env bash
# Makes a checkout runnable: system packages, npm dependencies, the native addon. `npm run demo`
# and `npm test` call it first, so a fresh machine needs nothing else. Each phase is skipped when
# already done (a repeated run costs well under a second) and prints one line when it runs; the
# details go to the log file that line names.
#
#   bash deploy/bootstrap.sh            # every phase
#   bash deploy/bootstrap.sh check      # only report missing system packages (exit 1 if any)
#   bash deploy/bootstrap.sh npm addon  # the named phases (the images use these)
set -euo pipefail
cd "$(dirname "$0")/.."

mkdir -p .longshot
log=.longshot/setup.log
: >"$log"
say() { printf '[setup] %s\n' "$*" >&2; }
# Runs a command with its output in the log; on failure, says so with the log's tail.
quietly() {
  printf '\n$ %s\n' "$*" >>"$log"
  if ! "$@" >>"$log" 2>&1; then
    say "failed: $* (full output in $log); last lines:"
    tail -n 15 "$log" | sed 's/^/    /' >&2
    exit 1
  fi
}

# --- system packages (Debian names) -------------------------------------------------------------
# Each package is checked by what the project uses from it, captured whole before matching (a
# `producer | grep -q` pipeline under pipefail fails at random when grep exits early).
missing_packages() {
  local missing=() libs=''
  have() { command -v "$1" >/dev/null 2>&1; }
  have ffmpeg && have ffprobe || missing+=(ffmpeg)
  have redis-server || missing+=(redis-server)
  have protoc || missing+=(protobuf-compiler)
  # promtool checks the shipped Prometheus rules in the test suite; the server itself runs them
  # against a real cluster (test/e2e/prometheus.test.ts).
  have promtool && have prometheus || missing+=(prometheus)
  have g++ && have make || missing+=(g++ make)
  have cmake || missing+=(cmake)  # the native driver (deploy/gpu-check.sh)
  have python3 || missing+=(python3)
  # Headless Chromium drives the web console's end-to-end test (test/e2e/console.test.ts).
  have chromium || missing+=(chromium)
  # OpenBLAS is only the kernel benchmark's baseline (loaded at run time), never a dependency of
  # the engine. ldconfig lives in /sbin, which a non-root PATH may lack.
  # Debian's PyTorch and NumPy run the trainer (apps/trainer) and its agreement test with the engine.
  if have dpkg-query; then
    libs=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' libopenblas-dev python3-torch python3-numpy 2>/dev/null || true)
    for pkg in libopenblas-dev python3-torch python3-numpy; do
      [[ $libs == *"$pkg ii"* ]] || missing+=("$pkg")
    done
  else
    libs=$( (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null || true)
    [[ $libs == *libopenblas.so.0* ]] || missing+=(libopenblas-dev)
    /usr/bin/python3 -c 'import torch, numpy' >/dev/null 2>&1 || missing+=(python3-torch python3-numpy)
  fi
  printf '%s\n' "${missing[@]}"
}

phase_check() {
  local missing
  missing=$(missing_packages | xargs)
  if [ -n "$missing" ]; then
    say "missing system packages: $missing"
    return 1
  fi
}

phase_system() {
  local missing
  missing=$(missing_packages | xargs)
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing system packages: $missing (log: $log)"
    export DEBIAN_FRONTEND=noninteractive
    quietly apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    quietly apt-get install -y -qq --no-install-recommends $missing
  else
    say "missing system packages: $missing"
    say "install them with: sudo apt-get install $missing"
    exit 1
  fi
}

# --- npm dependencies ----------------------------------------------------------------------------
# Installed with `npm ci` (the committed lock, exactly; never rewritten) whenever a manifest or the
# lock differs from what was installed last.
manifest_hash() {
  cat package.json package-lock.json libs/*/package.json apps/*/package.json | sha256sum | cut -d' ' -f1
}
phase_npm() {
  local stamp=node_modules/.longshot-installed want
  want=$(manifest_hash)
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0
  say "installing npm dependencies with npm ci (log: $log)"
  quietly npm ci --no-audit --no-fund
  printf '%s\n' "$want" >"$stamp"
}

# --- native addon ---------------------------------------------------------------------------------
phase_addon() {
  local addon=libs/engine/build/Release/longshot_engine.node
  if [ -f "$addon" ] && [ -z "$(find libs/engine/binding.gyp libs/engine/native -newer "$addon" -print -quit 2>/dev/null)" ]; then
    return 0
  fi
  say "building the native engine, libs/engine (log: $log)"
  quietly npm run --silent build --workspace @longshot/engine
}

phases=("$@")
[ ${#phases[@]} -gt 0 ] || phases=(system npm addon)
for p in "${phases[@]}"; do
  case "$p" in
    check | system | npm | addon) "phase_$p" ;;
    *)
      say "unknown phase '$p' (phases: check, system, npm, addon)"
      exit 2
      ;;
  esac
done
