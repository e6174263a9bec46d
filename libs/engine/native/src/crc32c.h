// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, initial and final inversion: the
// iSCSI / RFC 3720 checksum; "123456789" -> 0xE3069283), in several implementations that give
// the same value, one chosen at run time by what the CPU supports:
//
//   avx512  VPCLMULQDQ folding of 4 x 512-bit accumulators (256 bytes per step), reduced to
//           128 bits by the same folding and to 32 bits by two crc32 instructions
//   sse42   the SSE4.2 crc32 instruction over three independent streams per block, whose states
//           are combined with one PCLMULQDQ carry-less multiplication each (Intel, "Fast CRC
//           Computation for iSCSI Polynomial Using CRC32 Instruction", 2011)
//   table   slicing-by-8 tables, portable
//
// Every folding and shifting constant is x^n mod P for some n, computed at start-up by
// `xn_mod_p` (below) rather than copied from a table; the tests check each variant against a
// bit-at-a-time reference on random lengths and alignments.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ls::crc {

// The CRC register without the inversions: `state` is what a previous call returned (start with
// 0xFFFFFFFF); the checksum is the final state inverted. So crc32c(p, n) = ~update(~0u, p, n).
using UpdateFn = uint32_t (*)(uint32_t state, const uint8_t* p, size_t n);

struct Variant {
  const char* name;
  UpdateFn update;
};

// The variants this CPU runs, fastest first ("table" always last).
const std::vector<Variant>& variants();
// The fastest variant's update.
UpdateFn best();
// One bit at a time: the reference.
uint32_t update_bitwise(uint32_t state, const uint8_t* p, size_t n);

inline uint32_t crc32c(const uint8_t* p, size_t n) { return ~best()(0xffffffffu, p, n); }

// x^n mod P in the reflected representation (bit 31 is x^0); exposed for the tests.
uint32_t xn_mod_p(uint64_t n);

}  // namespace ls::crc
