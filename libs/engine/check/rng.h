// A port of libs/random (Rng: FNV-1a + murmur keys, splitmix32 seeding, xoshiro128**, Box-Muller
// in float64) so the driver draws the same inputs and seeded weights as the TypeScript side from
// the same keys. Numeric keys are integers here (formatted as "#<n>" like JS does for them).
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace ls {
namespace check {

inline uint32_t hash32(const std::string& text, uint32_t seed) {
  uint32_t h = 0x811c9dc5u ^ seed;
  for (const unsigned char b : text) {
    h ^= b;
    h *= 0x01000193u;
  }
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

// One key of Rng.from: a string, or an integer (JS `#${n}`).
struct RngKey {
  std::string text;
  RngKey(const char* s) : text(s) {}
  RngKey(std::string s) : text(std::move(s)) {}
  static RngKey number(long long n) { return RngKey("#" + std::to_string(n)); }
};

class Rng {
 public:
  static Rng from(const std::vector<RngKey>& keys) {
    uint32_t x = 0x9e3779b9u;
    for (const RngKey& k : keys) x = hash32(k.text, x);
    Rng r;
    bool any = false;
    for (uint32_t& w : r.s_) {
      x += 0x9e3779b9u;
      uint32_t z = x;
      z = (z ^ (z >> 16)) * 0x85ebca6bu;
      z = (z ^ (z >> 13)) * 0xc2b2ae35u;
      w = z ^ (z >> 16);
      any = any || w != 0;
    }
    if (!any) r.s_[0] = 1;
    return r;
  }

  uint32_t next_u32() {
    uint32_t* s = s_;
    const uint32_t result = rotl(s[1] * 5u, 7) * 9u;
    const uint32_t t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  // Uniform in (0, 1), never 0.
  double uniform() { return (static_cast<double>(next_u32()) + 0.5) / 4294967296.0; }

  // Standard normals times `std` (Box-Muller, both values used), rounded to float32.
  void fill_normal(float* out, size_t n, double std) {
    for (size_t i = 0; i < n; i += 2) {
      const double r = std::sqrt(-2.0 * std::log(uniform()));
      const double a = 2.0 * M_PI * uniform();
      out[i] = static_cast<float>(r * std::cos(a) * std);
      if (i + 1 < n) out[i + 1] = static_cast<float>(r * std::sin(a) * std);
    }
  }

 private:
  static uint32_t rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }
  uint32_t s_[4] = {0, 0, 0, 0};
};

}  // namespace check
}  // namespace ls
