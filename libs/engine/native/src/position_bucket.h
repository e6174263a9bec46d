// T5's bidirectional relative position bucket (ops.ts, relative_position_bias), the one definition
// shared by the CPU backend and the CUDA kernels (host and device code alike).
#pragma once

#include <cmath>

#ifdef __CUDACC__
#define LS_HOST_DEVICE __host__ __device__
#else
#define LS_HOST_DEVICE
#endif

namespace ls {

// The bucket of relative position `rel` = key position - query position. Half the buckets hold
// rel <= 0, the other half rel > 0 (offset by half); within a half, distances below
// exact = half / 2 have a bucket each, larger ones share buckets spaced logarithmically up to
// max_distance, and every distance from there on lands in the half's last bucket. The log part is
// evaluated in float32 the way the reference implementations do (ratio, log, divide, multiply,
// each rounded to float32, then truncated), with the log itself rounded correctly from float64
// so that the CPU and the GPU agree on every boundary.
LS_HOST_DEVICE inline long long relative_position_bucket(long long rel, long long buckets,
                                                         long long max_distance) {
  const long long half = buckets / 2;
  const long long exact = half / 2;
  const long long base = rel > 0 ? half : 0;
  const long long n = rel < 0 ? -rel : rel;
  if (n < exact) return base + n;
  const float ratio = static_cast<float>(n) / static_cast<float>(exact);
  const float log_ratio = static_cast<float>(log(static_cast<double>(ratio)));
  const float log_span =
      static_cast<float>(log(static_cast<double>(max_distance) / static_cast<double>(exact)));
  const float scaled = (log_ratio / log_span) * static_cast<float>(half - exact);
  long long large = exact + static_cast<long long>(scaled);
  if (large > half - 1) large = half - 1;
  return base + large;
}

}  // namespace ls
