// Page content: hashing of whole pages for the user-space deduplicator's content index.
// Reads memory of a live Region whose pages lib/ has checked are readable.
#include <unistd.h>

#include <cstring>
#include <vector>

#include "addon.h"

namespace memdedup {
namespace {

// XXH64 rounds (Yann Collet's xxHash, 64-bit): fast, well mixed, not cryptographic. Page sizes
// are multiples of 32 bytes, so only the stripe loop and the final avalanche are needed.
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

uint64_t HashPage(const unsigned char* p, size_t length) {
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

// hashPages(address, pageIndexes: Uint32Array, count, out: BigUint64Array, throughKernel) -> count | -errno
// Hashes the pages at address + index * pageSize; indexes lib/ validated against the Region.
// throughKernel (file-backed Regions, whose file someone may truncate): each batch of pages is
// first copied through the kernel (ReadOwnMemory), so a page past the file's new end is EFAULT
// instead of a SIGBUS in this process.
Napi::Value HashPages(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(address, ArgU64(info, 0));
  MEMDEDUP_ARG(count, ArgU64(info, 2));
  MEMDEDUP_ARG(indexes, ArgTypedArray<uint32_t>(info, 1, count));
  MEMDEDUP_ARG(out, ArgTypedArray<uint64_t>(info, 3, count));
  MEMDEDUP_ARG(through_kernel, ArgInt(info, 4, 0, 1));
  const unsigned char* base = reinterpret_cast<const unsigned char*>(address);
  size_t page_size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (!through_kernel) {
    for (size_t i = 0; i < count; i++) out.data[i] = HashPage(base + static_cast<size_t>(indexes.data[i]) * page_size, page_size);
    return Napi::Number::New(info.Env(), static_cast<double>(count));
  }
  std::vector<unsigned char> copy(page_size);
  for (size_t i = 0; i < count; i++) {
    if (ReadOwnMemory(copy.data(), address + static_cast<size_t>(indexes.data[i]) * page_size, page_size) < 0) {
      return Napi::Number::New(info.Env(), -errno);
    }
    out.data[i] = HashPage(copy.data(), page_size);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(count));
}

}  // namespace

void InitContent(Napi::Env env, Napi::Object exports) {
  Export(exports, "hashPages", HashPages);
}

}  // namespace memdedup
