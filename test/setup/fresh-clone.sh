#!/usr/bin/env bash
# The first hour, as a new user meets it: a fresh clone per user (root, and a non-root user this
# script creates when run as root), `npm run demo` N times in each, and the bootstrap's package
# check M times. Passes when no run prints an `npm error` line, every demo succeeds and the
# checkout stays clean. Slow (a full install per user): run by hand, not in `npm test`.
#
#   bash test/setup/fresh-clone.sh [DEMOS=20] [CHECKS=200]
set -euo pipefail
demos=${1:-20}
checks=${2:-200}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d /tmp/longshot-fresh-XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT

run_as() { # USER COMMAND
  if [ "$1" = "$(id -un)" ]; then bash -c "$2"; else su "$1" -s /bin/bash -c "$2"; fi
}

users=("$(id -un)")
if [ "$(id -u)" = 0 ]; then
  id longshot-newcomer >/dev/null 2>&1 || useradd --create-home --shell /bin/bash longshot-newcomer
  users+=(longshot-newcomer)
fi

failed=0
for user in "${users[@]}"; do
  dir="$work/$user"
  git clone -q "$repo" "$dir"
  chown -R "$user" "$dir"
  bad=0
  for i in $(seq "$checks"); do run_as "$user" "cd '$dir' && bash deploy/bootstrap.sh check" >/dev/null 2>&1 || bad=$((bad + 1)); done
  echo "$user: package check passed $((checks - bad)) of $checks"
  [ "$bad" = 0 ] || failed=1
  ok=0 npm_errors=0 dirty=0
  for i in $(seq "$demos"); do
    log="$work/$user-demo-$i.log"
    start=$(date +%s)
    if run_as "$user" "cd '$dir' && npm run demo" >"$log" 2>&1; then ok=$((ok + 1)); else echo "$user: demo $i failed:"; tail -n 20 "$log"; fi
    grep -q 'npm error' "$log" && npm_errors=$((npm_errors + 1))
    status=$(run_as "$user" "git -C '$dir' status --porcelain" 2>&1) || status="git status failed: $status"
    [ -z "$status" ] || { dirty=$((dirty + 1)); echo "$user: demo $i left: $status"; }
    echo "$user: demo $i $(( $(date +%s) - start )) s"
  done
  echo "$user: demo succeeded $ok of $demos; runs with an npm error line: $npm_errors; runs that left the checkout dirty: $dirty"
  [ "$ok" = "$demos" ] && [ "$npm_errors" = 0 ] && [ "$dirty" = 0 ] || failed=1
done
exit "$failed"
