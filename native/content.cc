// Page content: hashing of whole pages for the user-space deduplicator's content index.
// Reads memory of a live Region whose pages lib/ has checked are readable.
#include <unistd.h>

#include <cstring>

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

// hashPages(address, pageIndexes: Uint32Array, count, out: BigUint64Array) -> count
// Hashes the pages at address + index * pageSize; indexes lib/ validated against the Region.
Napi::Value HashPages(const Napi::CallbackInfo& info) {
  const unsigned char* base = reinterpret_cast<const unsigned char*>(ArgAddress(info, 0));
  Napi::Uint32Array indexes = info[1].As<Napi::Uint32Array>();
  size_t count = ArgSize(info, 2);
  Napi::TypedArray out_array = info[3].As<Napi::TypedArray>();
  if (out_array.TypedArrayType() != napi_biguint64_array) return Napi::Number::New(info.Env(), -EINVAL);
  // Cheap re-checks: never read or write past the arrays we were given.
  size_t out_length = out_array.ElementLength();
  if (count > indexes.ElementLength() || count > out_length) return Napi::Number::New(info.Env(), -EINVAL);
  uint64_t* out = reinterpret_cast<uint64_t*>(static_cast<uint8_t*>(out_array.ArrayBuffer().Data()) +
                                              out_array.ByteOffset());
  size_t page_size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  for (size_t i = 0; i < count; i++) out[i] = HashPage(base + static_cast<size_t>(indexes[i]) * page_size, page_size);
  return Napi::Number::New(info.Env(), static_cast<double>(count));
}

}  // namespace

void InitContent(Napi::Env env, Napi::Object exports) {
  exports.Set("hashPages", Napi::Function::New(env, HashPages, "hashPages"));
}

}  // namespace memdedup
