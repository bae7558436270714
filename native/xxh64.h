// The page hash: XXH64 rounds (Yann Collet's xxHash, 64-bit): fast, well mixed, not
// cryptographic. Page sizes are multiples of 32 bytes, so only the stripe loop and the final
// avalanche are needed. No N-API here: the twin index (twin_index.h) and the benchmarks' C++
// reference of the merge's user-space limit (bench/c/merge_limit.cc) hash with the same code.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace memdedup {
namespace xxh64 {
constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL, kP2 = 0xC2B2AE3D27D4EB4FULL, kP3 = 0x165667B19E3779F9ULL,
                   kP4 = 0x85EBCA77C2B2AE63ULL;
inline uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t Round(uint64_t acc, uint64_t input) { return Rotl(acc + input * kP2, 31) * kP1; }
inline uint64_t MergeRound(uint64_t acc, uint64_t v) { return (acc ^ Round(0, v)) * kP1 + kP4; }
inline uint64_t Load(const unsigned char* p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return v;
}
}  // namespace xxh64

inline uint64_t HashPage(const unsigned char* p, size_t length) {
  using namespace xxh64;
  uint64_t v1 = kP1 + kP2, v2 = kP2, v3 = 0, v4 = 0 - kP1;
  for (const unsigned char* end = p + length; p < end; p += 32) {
    v1 = Round(v1, Load(p));
    v2 = Round(v2, Load(p + 8));
    v3 = Round(v3, Load(p + 16));
    v4 = Round(v4, Load(p + 24));
  }
  uint64_t h = Rotl(v1, 1) + Rotl(v2, 7) + Rotl(v3, 12) + Rotl(v4, 18);
  h = MergeRound(MergeRound(MergeRound(MergeRound(h, v1), v2), v3), v4) + length;
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  return h ^ (h >> 32);
}

}  // namespace memdedup
