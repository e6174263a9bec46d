#!/usr/bin/env bash
# The GPU proof in one command, for a bare GPU machine (nvcc, CMake, Python with PyTorch; no Node):
#
#   bash deploy/gpu-check.sh OUT
#
# 1. builds the engine's native driver (libs/engine/CMakeLists.txt) with nvcc for the GPU it finds
#    (nvidia-smi's compute capability; sm_90 when there is none, so a machine without a GPU still
#    proves the kernels compile for Hopper), incrementally in build/engine-check;
# 2. runs the op and stage-window conformance (every op x case of libs/engine/check/cases.json on
#    each CPU SIMD level vs the float64 reference, and on CUDA vs the CPU for f32, bf16 and f16;
#    the `small` stage window on CUDA vs the CPU) -> OUT/conformance.json;
#    and, on CUDA, that a linear's rows do not depend on how many rows share the call
#    (row_independence: the pinned GEMMs of docs/cuda.md, what stage groups need for the same bits);
# 3. where the repository has Node and node_modules: the stage-group conformance on the CUDA
#    backend (test/conformance/stage-parallel.test.ts, "on CUDA": a group's shards give the single
#    stage's bits) on a machine with a GPU -> OUT/stage-parallel.json; reported as skipped, with
#    the reason, otherwise;
# 4. times one wan2.1-t2v-1.3b stage block-step at 832x480 on CUDA (bf16) against
#    bench/gpu_pytorch.py on the same GPU -> OUT/bench.json;
# 4. moves 100 MB tensors through the data plane's device paths between two processes, through the
#    real sender and listener (libs/engine/check/dataplane_device.cc): a CUDA IPC handle on one
#    GPU (when >= 1 is visible) and NCCL send/recv from GPU 0 to GPU 1 (when >= 2 are visible and
#    libnccl.so.2 is found: the system's, or the one PyTorch's wheels bring) -> OUT/dataplane.json;
# and writes OUT/gpu-check.json (timings, exit status). Without a GPU the CUDA cases and the
# benchmark are reported as skipped, with the reason. Exit status: non-zero when a check failed.
#
#   bash deploy/gpu-check.sh --manifest    lists the files the command needs (what must travel)
#
# Budget: under 5 minutes on an H100/H200 including the build; the two runs are capped at 120 s
# and 210 s (LONGSHOT_CONFORMANCE_TIMEOUT, LONGSHOT_BENCH_TIMEOUT; exit 124 when hit), so a hung
# kernel cannot eat a short GPU lease.
# Environment: LONGSHOT_CUDA_ARCHS (e.g. "80;90") overrides the detected architecture;
# LONGSHOT_CUDA=ON|OFF|AUTO; LONGSHOT_CHECK_BUILD (build directory); PYTHON (default python3);
# LONGSHOT_GPU_CHECK_BENCH=0 skips the benchmark (npm test does on a GPU machine);
# LONGSHOT_DATAPLANE_TIMEOUT caps step 4 (default 120 s).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

MANIFEST=(deploy/gpu-check.sh libs/engine/CMakeLists.txt libs/engine/native/src libs/engine/check bench/gpu_pytorch.py)
if [ "${1:-}" = "--manifest" ]; then
  find "${MANIFEST[@]}" -type f | sort
  exit 0
fi
if [ $# -ne 1 ] || [ "${1:0:1}" = "-" ]; then
  echo "usage: bash deploy/gpu-check.sh OUT_DIR | --manifest" >&2
  exit 2
fi
mkdir -p "$1"
out=$(cd "$1" && pwd)
say() { printf '[gpu-check] %s\n' "$*" >&2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs() { local ms=$(($(now_ms) - $1)); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }  # since $1
t_start=$(now_ms)

# --- the CUDA toolkit and the GPU --------------------------------------------------------------
cuda_home=""
for dir in "${CUDA_HOME:-}" "${CUDA_PATH:-}" \
  "$(command -v nvcc >/dev/null 2>&1 && dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" \
  "$(command -v nvcc >/dev/null 2>&1 && grep -aom1 '/[^ "]*/bin/nvcc' "$(command -v nvcc)" 2>/dev/null | sed 's|/bin/nvcc$||')" \
  /usr/local/cuda; do
  if [ -n "$dir" ] && [ -f "$dir/include/cuda_runtime_api.h" ] && [ -x "$dir/bin/nvcc" ]; then
    cuda_home=$dir
    break
  fi
done
archs=${LONGSHOT_CUDA_ARCHS:-}
gpu="none"
if command -v nvidia-smi >/dev/null 2>&1; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .' || true)
  name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 || true)
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 || true)
  if [[ "$cap" =~ ^[0-9]+$ ]]; then
    gpu="$name (sm_$cap, driver $driver)"
    archs=${archs:-$cap}
  fi
fi
archs=${archs:-90}
say "toolkit: ${cuda_home:-none}; GPU: $gpu; building for sm $archs"

# --- build (incremental) -----------------------------------------------------------------------------
build=${LONGSHOT_CHECK_BUILD:-$root/build/engine-check}
t0=$(now_ms)
generator=()
if command -v ninja >/dev/null 2>&1; then generator=(-G Ninja); fi
cached_archs=$(sed -n 's/^LONGSHOT_CUDA_ARCHS:STRING=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
cached_mode=$(sed -n 's/^LONGSHOT_CUDA:STRING=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
if [ ! -f "$build/CMakeCache.txt" ] || [ "$cached_archs" != "$archs" ] || [ "$cached_mode" != "${LONGSHOT_CUDA:-AUTO}" ]; then
  if [ -f "$build/CMakeCache.txt" ] && ! grep -q "^CMAKE_GENERATOR:INTERNAL=${generator[1]:-Unix Makefiles}$" "$build/CMakeCache.txt"; then
    rm -rf "$build"  # another generator wrote it
  fi
  CUDA_HOME=$cuda_home cmake -S libs/engine -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DLONGSHOT_CUDA="${LONGSHOT_CUDA:-AUTO}" "-DLONGSHOT_CUDA_ARCHS=$archs" >&2
fi
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 4)" >&2
build_s=$(secs "$t0")
say "built in ${build_s}s"

# cuBLAS is opened at run time: make the toolkit's copy (or else the one PyTorch's wheels bring)
# findable for the driver, and not for Python, which loads its own. The reports say whether
# cuBLAS was used (`cublas`); without it `linear` runs on the slow fallback GEMM.
cublas_dir=""
for dir in "$cuda_home/lib64" "$cuda_home/targets/$(uname -m)-linux/lib"; do
  if [ -n "$cuda_home" ] && compgen -G "$dir/libcublasLt.so*" >/dev/null; then
    cublas_dir=$dir
    break
  fi
done
# The directory of the first file named like $1 in the nvidia-* wheels PyTorch depends on
# (nvidia/cublas/lib, nvidia/cu13/lib, nvidia/nccl/lib, ...) or torch/lib; empty if none.
wheel_lib_dir() {
  local lib
  lib=$("${PYTHON:-python3}" -c 'import importlib.util as u
for n in ("nvidia", "torch"):
    s = u.find_spec(n)
    print("\n".join(s.submodule_search_locations or []) if s else "")' 2>/dev/null | while read -r d; do
    if [ -d "$d" ]; then find "$d" -maxdepth 4 -name "$1" 2>/dev/null || true; fi
  done | sort | head -n1 || true)
  if [ -n "$lib" ]; then dirname "$lib"; fi
}
if [ -z "$cublas_dir" ]; then cublas_dir=$(wheel_lib_dir 'libcublasLt.so*'); fi
say "cuBLAS: ${cublas_dir:-not found, left to the system library path}"
check=("$build/longshot-check")
if [ -n "$cublas_dir" ]; then
  check=(env "LD_LIBRARY_PATH=$cublas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "LONGSHOT_CHILD_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" "${check[@]}")
fi

# --- 1. conformance -----------------------------------------------------------------------------------
t0=$(now_ms)
mkdir -p "$out/stage-small-cpu"
set +e
timeout "${LONGSHOT_CONFORMANCE_TIMEOUT:-120}" "${check[@]}" conformance --cases libs/engine/check/cases.json --stage libs/engine/check/stage-small.json \
  --dump "$out/stage-small-cpu" >"$out/conformance.json"
conformance_rc=$?
set -e
conformance_s=$(secs "$t0")
say "conformance: exit $conformance_rc in ${conformance_s}s -> $out/conformance.json"

# --- 2. stage groups on CUDA (needs Node) ----------------------------------------------------------
t0=$(now_ms)
set +e
if [ "$gpu" = none ]; then
  echo '{"check":"stage-parallel","skipped":true,"skip_reason":"no GPU (nvidia-smi)"}' >"$out/stage-parallel.json"
  groups_rc=0
elif ! command -v node >/dev/null 2>&1 || [ ! -x node_modules/.bin/vitest ] || [ ! -f libs/engine/build/Release/longshot_engine.node ]; then
  echo '{"check":"stage-parallel","skipped":true,"skip_reason":"no Node, node_modules or built addon here (npm ci && bash deploy/bootstrap.sh); conformance.json row_independence is the device-side check"}' >"$out/stage-parallel.json"
  groups_rc=0
else
  node_env=(env)
  if [ -n "$cublas_dir" ]; then node_env+=("LD_LIBRARY_PATH=$cublas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"); fi
  "${node_env[@]}" timeout "${LONGSHOT_GROUPS_TIMEOUT:-180}" node_modules/.bin/vitest run --config test/vitest.config.ts \
    test/conformance/stage-parallel.test.ts -t 'on CUDA' --reporter=json --outputFile="$out/stage-parallel.json" >&2
  groups_rc=$?
fi
set -e
groups_s=$(secs "$t0")
say "stage groups on CUDA: exit $groups_rc in ${groups_s}s -> $out/stage-parallel.json"

# --- 3. stage benchmark ---------------------------------------------------------------------------------
t0=$(now_ms)
set +e
if [ "${LONGSHOT_GPU_CHECK_BENCH:-1}" = 0 ]; then
  echo '{"check":"bench","skipped":true,"skip_reason":"LONGSHOT_GPU_CHECK_BENCH=0"}' >"$out/bench.json"
  bench_rc=0
else
  timeout "${LONGSHOT_BENCH_TIMEOUT:-210}" "${check[@]}" bench --fixture libs/engine/check/stage-wan2.1-t2v-1.3b.json \
    --pytorch bench/gpu_pytorch.py --python "${PYTHON:-python3}" >"$out/bench.json"
  bench_rc=$?
fi
set -e
bench_s=$(secs "$t0")
say "bench: exit $bench_rc in ${bench_s}s -> $out/bench.json"

# --- 4. the data plane's device paths ------------------------------------------------------------------
# NCCL is opened at run time like cuBLAS: the system's libnccl.so.2, else the nvidia-nccl wheel's.
t0=$(now_ms)
gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true); fi
nccl_dir=""
system_libs=$( (ldconfig -p || /sbin/ldconfig -p) 2>/dev/null || true)  # whole, then matched (no early-exit pipe)
if [[ $system_libs != *libnccl.so.2* ]]; then
  nccl_dir=$(wheel_lib_dir 'libnccl.so.2')
fi
set +e
LD_LIBRARY_PATH="${nccl_dir:+$nccl_dir:}${LD_LIBRARY_PATH:-}" timeout "${LONGSHOT_DATAPLANE_TIMEOUT:-120}" "$build/longshot-dataplane-check" \
  --devices "$gpus" --bytes 100000000 --reps 4 >"$out/dataplane.json"
dataplane_rc=$?
set -e
dataplane_s=$(secs "$t0")
say "data plane: exit $dataplane_rc in ${dataplane_s}s ($gpus GPU(s), NCCL from ${nccl_dir:-the system library path}) -> $out/dataplane.json"

total_s=$(secs "$t_start")
rc=0
[ "$conformance_rc" -eq 0 ] || rc=1
[ "$bench_rc" -eq 0 ] || rc=1
[ "$groups_rc" -eq 0 ] || rc=1
[ "$dataplane_rc" -eq 0 ] || rc=1
printf '{"check":"gpu-check","gpu":"%s","cuda_archs":"%s","cuda_home":"%s","cublas_dir":"%s","build_s":%s,"conformance_s":%s,"groups_s":%s,"bench_s":%s,"dataplane_s":%s,"total_s":%s,"conformance_rc":%d,"groups_rc":%d,"bench_rc":%d,"dataplane_rc":%d,"ok":%s}\n' \
  "$gpu" "$archs" "$cuda_home" "$cublas_dir" "$build_s" "$conformance_s" "$groups_s" "$bench_s" "$dataplane_s" "$total_s" "$conformance_rc" "$groups_rc" "$bench_rc" "$dataplane_rc" \
  "$([ $rc -eq 0 ] && echo true || echo false)" >"$out/gpu-check.json"
cat "$out/conformance.json" "$out/stage-parallel.json" "$out/bench.json" "$out/dataplane.json" "$out/gpu-check.json"
exit $rc
