#include "crc32c.h"

#include <cstring>

// GCC 12 flags its own _mm512_undefined_epi32() inside the AVX-512 intrinsic headers (binding.gyp
// silences the same for kernels_avx512.cc).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

namespace ls::crc {

namespace {

constexpr uint32_t kPoly = 0x82f63b78u;  // reflected Castagnoli polynomial

uint64_t load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// ---- table (slicing-by-8) ------------------------------------------------------------------------

struct Tables {
  uint32_t t[8][256];
  Tables() {
    for (uint32_t i = 0; i < 256; ++i) t[0][i] = update_bitwise(0, reinterpret_cast<const uint8_t*>(&i), 1);
    for (uint32_t i = 0; i < 256; ++i)
      for (int k = 1; k < 8; ++k) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
  }
};
const Tables& tables() {
  static const Tables t;
  return t;
}

uint32_t update_table(uint32_t c, const uint8_t* p, size_t n) {
  const auto& t = tables().t;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t v = load64(p) ^ c;
    c = t[7][v & 0xff] ^ t[6][(v >> 8) & 0xff] ^ t[5][(v >> 16) & 0xff] ^ t[4][(v >> 24) & 0xff] ^ t[3][(v >> 32) & 0xff] ^
        t[2][(v >> 40) & 0xff] ^ t[1][(v >> 48) & 0xff] ^ t[0][v >> 56];
  }
  for (; n; --n, ++p) c = (c >> 8) ^ t[0][(c ^ *p) & 0xff];
  return c;
}

// ---- sse42: three crc32 streams, combined by carry-less multiplication --------------------------
//
// A CRC register is linear: feeding A then B from state s gives shift(state after A, |B|) xor
// (B fed from state 0), where shift(c, n) is c * x^(8n) mod P, the register after n zero bytes.
// A block of 3L bytes is fed as three streams of L bytes (the first from s, the others from 0,
// so the three dependency chains of crc32 instructions overlap), then
//   state = shift(c0, 2L) ^ shift(c1, L) ^ c2.
// shift(c, n) = crc32_u64(0, clmul(c, x^(8n - 33) mod P)): the 32 x 32-bit product of two
// reflected values carries one factor x, and crc32 of a 64-bit word from state 0 multiplies by
// x^32 and reduces, so the constant makes up the remaining 8n - 33.

struct Shift {
  size_t stream;  // L
  uint64_t k2, k1;  // x^(8 * 2L - 33), x^(8 * L - 33)
};

struct Sse42Constants {
  Shift tiers[2];
  Sse42Constants() {
    const size_t lens[2] = {4096, 256};
    for (int i = 0; i < 2; ++i) tiers[i] = {lens[i], xn_mod_p(8 * 2 * lens[i] - 33), xn_mod_p(8 * lens[i] - 33)};
  }
};
const Sse42Constants& sse42_constants() {
  static const Sse42Constants c;
  return c;
}

__attribute__((target("sse4.2,pclmul"))) inline uint32_t shift_by(uint32_t c, uint64_t k) {
  __m128i prod = _mm_clmulepi64_si128(_mm_cvtsi32_si128(static_cast<int>(c)), _mm_cvtsi64_si128(static_cast<long long>(k)), 0x00);
  return static_cast<uint32_t>(_mm_crc32_u64(0, static_cast<uint64_t>(_mm_cvtsi128_si64(prod))));
}

__attribute__((target("sse4.2,pclmul"))) uint32_t update_sse42(uint32_t state, const uint8_t* p, size_t n) {
  uint64_t c0 = state;
  // Align to 8 bytes so the word loads do not straddle cache lines.
  for (; n && (reinterpret_cast<uintptr_t>(p) & 7); --n, ++p) c0 = _mm_crc32_u8(static_cast<uint32_t>(c0), *p);
  for (const Shift& s : sse42_constants().tiers) {
    const size_t L = s.stream;
    while (n >= 3 * L) {
      uint64_t c1 = 0, c2 = 0;
      const uint8_t* a = p;
      const uint8_t* b = p + L;
      const uint8_t* c = p + 2 * L;
      for (size_t i = 0; i < L; i += 8) {
        c0 = _mm_crc32_u64(c0, load64(a + i));
        c1 = _mm_crc32_u64(c1, load64(b + i));
        c2 = _mm_crc32_u64(c2, load64(c + i));
      }
      c0 = shift_by(static_cast<uint32_t>(c0), s.k2) ^ shift_by(static_cast<uint32_t>(c1), s.k1) ^ static_cast<uint32_t>(c2);
      p += 3 * L;
      n -= 3 * L;
    }
  }
  for (; n >= 8; n -= 8, p += 8) c0 = _mm_crc32_u64(c0, load64(p));
  for (; n; --n, ++p) c0 = _mm_crc32_u8(static_cast<uint32_t>(c0), *p);
  return static_cast<uint32_t>(c0);
}

// ---- avx512: VPCLMULQDQ folding ----------------------------------------------------------------
//
// The message so far is kept as 16-byte chunks X = (lo, hi) (lo: the first 8 bytes) that are
// congruent to it mod P. Moving X forward over D bits (to XOR it into the chunk that starts D bits
// after X's start... i.e. ends D bits after X's end) is X * x^D = lo * x^(64 + D) + hi * x^D;
// with the product's extra factor x and the 32-bit constant's x^32 (as above):
//   fold(X, D) = clmul(lo, x^(D + 31) mod P) ^ clmul(hi, x^(D - 33) mod P)   (at most 96 bits).
// Four 512-bit accumulators (sixteen 16-byte chunks) each move 256 bytes per step; at the end
// they are folded into one 16-byte chunk, whose CRC from state 0 (two crc32 instructions) is the
// register. The initial state is XORed into the first 4 bytes, which is what a CRC register means.

struct FoldConstants {
  uint64_t d2048[2], d512[2], d128[2];
  FoldConstants() {
    auto set = [](uint64_t* k, uint64_t bits) { k[0] = xn_mod_p(bits + 31), k[1] = xn_mod_p(bits - 33); };
    set(d2048, 2048), set(d512, 512), set(d128, 128);
  }
};
const FoldConstants& fold_constants() {
  static const FoldConstants c;
  return c;
}

#define LS_AVX512 __attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul,sse4.2")))

LS_AVX512 inline __m512i fold512(__m512i x, __m512i k, __m512i next) {
  // 0x96: a ^ b ^ c
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11), next, 0x96);
}
LS_AVX512 inline __m128i fold128(__m128i x, __m128i k, __m128i next) {
  return _mm_ternarylogic_epi64(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11), next, 0x96);
}

LS_AVX512 uint32_t update_avx512(uint32_t state, const uint8_t* p, size_t n) {
  if (n < 1024) return update_sse42(state, p, n);
  const FoldConstants& fc = fold_constants();
  const __m512i k2048 = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(fc.d2048)));
  const __m512i k512 = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(fc.d512)));
  const __m128i k128 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(fc.d128));
  __m512i x0 = _mm512_loadu_si512(p), x1 = _mm512_loadu_si512(p + 64), x2 = _mm512_loadu_si512(p + 128), x3 = _mm512_loadu_si512(p + 192);
  x0 = _mm512_xor_si512(x0, _mm512_zextsi128_si512(_mm_cvtsi32_si128(static_cast<int>(state))));
  p += 256, n -= 256;
  for (; n >= 256; p += 256, n -= 256) {
    x0 = fold512(x0, k2048, _mm512_loadu_si512(p));
    x1 = fold512(x1, k2048, _mm512_loadu_si512(p + 64));
    x2 = fold512(x2, k2048, _mm512_loadu_si512(p + 128));
    x3 = fold512(x3, k2048, _mm512_loadu_si512(p + 192));
  }
  x1 = fold512(x0, k512, x1);
  x2 = fold512(x1, k512, x2);
  x3 = fold512(x2, k512, x3);
  __m128i r = _mm512_extracti32x4_epi32(x3, 0);
  r = fold128(r, k128, _mm512_extracti32x4_epi32(x3, 1));
  r = fold128(r, k128, _mm512_extracti32x4_epi32(x3, 2));
  r = fold128(r, k128, _mm512_extracti32x4_epi32(x3, 3));
  uint64_t c = _mm_crc32_u64(0, static_cast<uint64_t>(_mm_cvtsi128_si64(r)));
  c = _mm_crc32_u64(c, static_cast<uint64_t>(_mm_extract_epi64(r, 1)));
  return update_sse42(static_cast<uint32_t>(c), p, n);
}

std::vector<Variant> detect() {
  std::vector<Variant> v;
  __builtin_cpu_init();
  const bool sse42 = __builtin_cpu_supports("sse4.2") && __builtin_cpu_supports("pclmul");
  if (sse42 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("vpclmulqdq"))
    v.push_back({"avx512", update_avx512});
  if (sse42) v.push_back({"sse42", update_sse42});
  v.push_back({"table", update_table});
  return v;
}

}  // namespace

uint32_t update_bitwise(uint32_t c, const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (kPoly & (0u - (c & 1)));
  }
  return c;
}

uint32_t xn_mod_p(uint64_t n) {
  // Reflected: bit 31 is x^0; multiplying by x shifts right, and x^32 reduces to kPoly.
  uint32_t r = 0x80000000u;
  for (uint64_t i = 0; i < n; ++i) r = (r >> 1) ^ (kPoly & (0u - (r & 1)));
  return r;
}

const std::vector<Variant>& variants() {
  static const std::vector<Variant> v = detect();
  return v;
}

UpdateFn best() {
  static const UpdateFn f = variants().front().update;
  return f;
}

}  // namespace ls::crc
