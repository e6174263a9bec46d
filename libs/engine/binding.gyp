{
  # Each SIMD level of the kernels is its own static library with its own target flags (never
  # -march=native); the addon picks one at run time with __builtin_cpu_supports. The scalar level
  # and everything else is built for the baseline ISA and linked first, so any inline function
  # the wide libraries also emit resolves to the baseline copy.
  # -ffp-contract=off: GCC would otherwise fuse a*b+c into an FMA in some inlined copies of a
  # kernel and not in others (e.g. the single-thread path vs the pool path), so the same op could
  # round differently with another thread count. FMAs we want are written as intrinsics.
  "target_defaults": {
    "cflags!": ["-fno-exceptions"],
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti"],
    "cflags": ["-O3", "-fPIC", "-Wall", "-Wextra", "-Wno-unused-parameter", "-ffp-contract=off"],
    "cflags_cc": ["-O3", "-std=gnu++17", "-fexceptions"],
  },
  # CUDA: on when nvcc is found or LONGSHOT_CUDA=1, off with LONGSHOT_CUDA=0 (native/cuda_config.js).
  # The kernels (.cu) go through nvcc by a gyp rule, so make rebuilds only what changed; the
  # runner (cuda_backend.cc) is plain C++ against the runtime API. The CUDA runtime is linked
  # statically and neither libcuda nor libcublas is linked at all (the runtime and the backend open
  # them at run time), so the addon loads, CPU-only, on machines without a GPU or driver.
  "variables": {
    "longshot_cuda%": "<!(node native/cuda_config.js enabled)",
    "cuda_nvcc%": "<!(node native/cuda_config.js nvcc)",
    "cuda_home%": "<!(node native/cuda_config.js home)",
    "cuda_libdir%": "<!(node native/cuda_config.js libdir)",
  },
  "targets": [
    {
      "target_name": "longshot_kernels_avx2",
      "type": "static_library",
      "sources": ["native/src/kernels_avx2.cc"],
      "cflags": ["-mavx2", "-mfma"],
    },
    {
      "target_name": "longshot_kernels_avx512",
      "type": "static_library",
      "sources": ["native/src/kernels_avx512.cc"],
      "cflags": ["-mavx512f", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"],
      # GCC 12 flags its own _mm512_undefined_ps() inside the intrinsic headers.
      "cflags_cc": ["-Wno-uninitialized", "-Wno-maybe-uninitialized"],
    },
    {
      "target_name": "longshot_engine",
      "sources": [
        "native/src/addon.cc",
        "native/src/engine.cc",
        "native/src/cpu_backend.cc",
        "native/src/thread_pool.cc",
        "native/src/blas.cc",
        "native/src/kernels_scalar.cc",
        "native/src/crc32c.cc",
        "native/src/dataplane.cc",
        "native/src/dataplane_napi.cc",
        "native/src/nccl_loader.cc",
      ],
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except",
        "longshot_kernels_avx2",
        "longshot_kernels_avx512",
      ],
      "libraries": ["-ldl", "-lpthread"],
      "conditions": [
        ["longshot_cuda==1", {
          "dependencies": ["longshot_cuda"],
          "libraries": ["-L<(cuda_libdir)", "-lcudart_static", "-ldl", "-lrt", "-lpthread"],
          # Keep the static runtime's symbols private to the addon.
          "ldflags": ["-Wl,--exclude-libs,libcudart_static.a"],
        }, {
          "sources": ["native/src/cuda_none.cc"],
        }],
      ],
    },
  ],
  "conditions": [
    ["longshot_cuda==1", {
      "targets": [
        {
          "target_name": "longshot_cuda",
          "type": "static_library",
          "sources": ["native/src/cuda_kernels.cu", "native/src/cuda_backend.cc", "native/src/cuda_link.cc"],
          "include_dirs": ["<(cuda_home)/include"],
          "rules": [
            {
              "rule_name": "nvcc",
              "extension": "cu",
              "inputs": ["native/src/cuda_kernels.h"],
              "outputs": ["<(INTERMEDIATE_DIR)/<(RULE_INPUT_ROOT).cu.o"],
              # Ampere and Hopper machine code, plus compute_90 PTX that newer GPUs JIT-compile.
              "action": [
                "<(cuda_nvcc)", "-std=c++17", "-O3", "-Xcompiler", "-fPIC",
                "-gencode", "arch=compute_80,code=sm_80",
                "-gencode", "arch=compute_90,code=sm_90",
                "-gencode", "arch=compute_90,code=compute_90",
                "-c", "<(RULE_INPUT_PATH)", "-o", "<@(_outputs)",
              ],
              "process_outputs_as_sources": 1,
              "message": "NVCC <(RULE_INPUT_PATH)",
            },
          ],
        },
      ],
    }],
  ],
}
