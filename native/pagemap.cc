// pagemap family: /proc/self/pagemap reads (entries) and the PAGEMAP_SCAN ioctl.
// Results are written into caller-provided typed arrays: no per-page JS objects.
#include <unistd.h>

#include "addon.h"
#include "compat.h"

namespace memdedup {
namespace {

// Bits of a /proc/pid/pagemap entry (Documentation/admin-guide/mm/pagemap.rst).
constexpr uint64_t kPfnMask = (1ULL << 55) - 1;
constexpr int kSoftDirtyBit = 55, kExclusiveBit = 56, kUffdWpBit = 57, kFileBit = 61,
              kSwappedBit = 62, kPresentBit = 63;
// Flag byte layout shared with lib/pagemap.ts (PageFlag).
enum : uint8_t { kPresent = 1, kSwapped = 2, kFile = 4, kExclusive = 8, kSoftDirty = 16, kUffdWp = 32 };

// pagemapEntries(fd, address, pages, pfns: BigUint64Array, flags: Uint8Array) -> pages | -errno
// pread()s the raw entries straight into pfns, then decodes them in place.
Napi::Value PagemapEntries(const Napi::CallbackInfo& info) {
  int fd = ArgInt(info, 0);
  uintptr_t address = ArgAddress(info, 1);
  size_t pages = ArgSize(info, 2);
  uint64_t* entries = static_cast<uint64_t*>(info[3].As<Napi::TypedArray>().ArrayBuffer().Data()) +
                      info[3].As<Napi::TypedArray>().ByteOffset() / sizeof(uint64_t);
  uint8_t* flags = info[4].As<Napi::Uint8Array>().Data();
  long page_size = sysconf(_SC_PAGESIZE);
  size_t want = pages * sizeof(uint64_t), done = 0;
  off_t offset = static_cast<off_t>(address / page_size * sizeof(uint64_t));
  while (done < want) {
    ssize_t n = pread(fd, reinterpret_cast<char*>(entries) + done, want - done, offset + done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Napi::Number::New(info.Env(), -errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  size_t got = done / sizeof(uint64_t);
  for (size_t i = 0; i < got; i++) {
    uint64_t e = entries[i];
    bool present = (e >> kPresentBit) & 1;
    flags[i] = (present ? kPresent : 0) | (((e >> kSwappedBit) & 1) ? kSwapped : 0) |
               (((e >> kFileBit) & 1) ? kFile : 0) | (((e >> kExclusiveBit) & 1) ? kExclusive : 0) |
               (((e >> kSoftDirtyBit) & 1) ? kSoftDirty : 0) | (((e >> kUffdWpBit) & 1) ? kUffdWp : 0);
    entries[i] = present ? (e & kPfnMask) : 0;
  }
  return Napi::Number::New(info.Env(), static_cast<double>(got));
}

}  // namespace

void InitPagemap(Napi::Env env, Napi::Object exports) {
  exports.Set("pagemapEntries", Napi::Function::New(env, PagemapEntries, "pagemapEntries"));
  // PAGEMAP_SCAN functions are registered below this line by the write-tracking work.
}

}  // namespace memdedup
