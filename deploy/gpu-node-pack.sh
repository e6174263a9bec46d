#!/usr/bin/env bash
# Packs the Node-side CUDA suites for a GPU machine that has no Node and no node_modules:
#
#   bash deploy/gpu-node-pack.sh OUT        # here, after npm ci and a CUDA build of the addon
#   bash OUT/run.sh RESULTS                 # there (nvidia driver; no network): one JSON line per suite
#
# OUT holds this machine's `node` (xz-compressed), the engine addon as built here (CUDA kernels for
# sm_80 and sm_90, the CUDA runtime linked in, cuBLAS opened at run time) and each suite bundled by
# esbuild into one file with test/gpu/vitest-shim.ts in vitest's place, laid out so the paths the
# code resolves from __dirname (the addon, the op case table) hold. About 29 MB: it travels with
# the working tree when `carry` names it (docs/cuda.md, "The Node suites on a GPU machine").
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ $# -ne 1 ]; then
  echo "usage: bash deploy/gpu-node-pack.sh OUT_DIR" >&2
  exit 2
fi
SUITES=(test/conformance/cuda.test.ts test/conformance/stage-parallel.test.ts)
addon=libs/engine/build/Release/longshot_engine.node
if ! node -e "process.exit(require('./$addon').info().cudaBuilt ? 0 : 1)" 2>/dev/null; then
  echo "gpu-node-pack: $addon is missing or was built without CUDA (npm run build:addon with nvcc on PATH)" >&2
  exit 1
fi
out=$1
rm -rf "$out"
mkdir -p "$out/t/d" "$out/t/build/Release" "$out/libs/engine/check" "$out/libs/engine/native"
cp "$addon" "$out/t/build/Release/"
cp libs/engine/check/cases.json "$out/libs/engine/check/"
cp libs/engine/native/cuda_config.js "$out/libs/engine/native/"
for suite in "${SUITES[@]}"; do
  name=$(basename "$suite" .test.ts)
  entry="$out/t/d/$name.entry.ts"
  printf "import '%s';\nimport { runDeclaredTests } from '%s';\nvoid runDeclaredTests('%s').then((s) => process.exit(s.failed > 0 ? 1 : 0));\n" \
    "$root/${suite%.ts}" "$root/test/gpu/vitest-shim" "$name" >"$entry"
  node_modules/.bin/esbuild "$entry" --bundle --platform=node --format=cjs --target=node20 --log-level=error \
    --alias:vitest="$root/test/gpu/vitest-shim.ts" --outfile="$out/t/d/$name.js"
  rm "$entry"
done
# LONGSHOT_PACK_NODE=0 leaves node out (the test suite checks the bundles with the running node).
if [ "${LONGSHOT_PACK_NODE:-1}" != 0 ]; then xz -T0 -6 -c "$(readlink -f "$(command -v node)")" >"$out/node.xz"; fi
cat >"$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# On the GPU machine: bash run.sh RESULTS_DIR. Exit status non-zero when a suite failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
results=${1:?usage: run.sh RESULTS_DIR}
mkdir -p "$results"
node=/tmp/longshot-node
if [ ! -x "$node" ]; then
  if command -v xz >/dev/null 2>&1; then xz -dc "$here/node.xz" >"$node"; else python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$here/node.xz" "$node"; fi
  chmod +x "$node"
fi
for lib in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  if compgen -G "$lib/libcublasLt.so*" >/dev/null; then export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break; fi
done
rc=0
for suite in "$here"/t/d/*.js; do
  name=$(basename "$suite" .js)
  "$node" "$suite" >"$results/$name.json" 2>"$results/$name.log" || rc=1
  cat "$results/$name.json"
done
exit $rc
RUN
du -sh "$out" | cut -f1 | sed 's/^/gpu-node-pack: /' >&2
