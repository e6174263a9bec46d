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
      ],
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except",
        "longshot_kernels_avx2",
        "longshot_kernels_avx512",
      ],
      "libraries": ["-ldl", "-lpthread"],
    },
  ],
}
