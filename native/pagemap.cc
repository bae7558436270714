// pagemap family: /proc/self/pagemap reads (entries) and the PAGEMAP_SCAN ioctl.
// Results are written into caller-provided typed arrays: no per-page JS objects.
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

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
  // Cheap re-check: never write past the arrays we were given.
  if (pages > info[3].As<Napi::TypedArray>().ElementLength() || pages > info[4].As<Napi::Uint8Array>().ElementLength()) {
    return Napi::Number::New(info.Env(), -EINVAL);
  }
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

// pagemapScan(fd, start, end, flags, maxPages, categoryInverted, categoryMask, categoryAnyofMask,
//             returnMask, vecLen, starts: BigUint64Array|null, ends: BigUint64Array|null,
//             categories: Uint32Array|null, out: Float64Array(2)) -> regions | -errno
// PAGEMAP_SCAN into a native scratch vector, then split into the caller's three arrays.
// out[0] = walk_end, where a full vector (or maxPages) stopped the walk; out[1] = bytes covered
// by the returned regions (summed here: BigInt arithmetic per region in JS costs ~30 ns each). Flags and masks are
// passed as given (signed 64-bit, so -1 reaches the kernel as ~0 for the invalid-argument tests).
// Re-check: with arrays, vecLen may not exceed the smallest of them; without arrays the kernel
// gets vec = 0 (and rejects vecLen > 0 with EINVAL before touching anything).
Napi::Value PagemapScan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct pm_scan_arg arg = {};
  arg.size = sizeof(arg);
  arg.start = ArgAddress(info, 1);
  arg.end = ArgAddress(info, 2);
  arg.flags = static_cast<__u64>(ArgInt64(info, 3));
  arg.max_pages = static_cast<__u64>(ArgInt64(info, 4));
  arg.category_inverted = static_cast<__u64>(ArgInt64(info, 5));
  arg.category_mask = static_cast<__u64>(ArgInt64(info, 6));
  arg.category_anyof_mask = static_cast<__u64>(ArgInt64(info, 7));
  arg.return_mask = static_cast<__u64>(ArgInt64(info, 8));
  double vec_len = info[9].As<Napi::Number>().DoubleValue();
  bool have_vec = !info[10].IsNull() && !info[10].IsUndefined();
  uint64_t* starts = nullptr;
  uint64_t* ends = nullptr;
  uint32_t* categories = nullptr;
  static thread_local std::vector<page_region> scratch;
  if (have_vec) {
    auto is = [&](size_t i, napi_typedarray_type type) {
      return info[i].IsTypedArray() && info[i].As<Napi::TypedArray>().TypedArrayType() == type;
    };
    if (!is(10, napi_biguint64_array) || !is(11, napi_biguint64_array) || !is(12, napi_uint32_array)) {
      return Napi::Number::New(env, -EINVAL);
    }
    Napi::BigUint64Array s = info[10].As<Napi::BigUint64Array>();
    Napi::BigUint64Array e = info[11].As<Napi::BigUint64Array>();
    Napi::Uint32Array c = info[12].As<Napi::Uint32Array>();
    size_t capacity = std::min({s.ElementLength(), e.ElementLength(), c.ElementLength()});
    if (!(vec_len >= 0) || vec_len > static_cast<double>(capacity)) return Napi::Number::New(env, -EINVAL);
    starts = s.Data();
    ends = e.Data();
    categories = c.Data();
    arg.vec_len = static_cast<__u64>(vec_len);
    if (scratch.size() < arg.vec_len) scratch.resize(arg.vec_len);
    arg.vec = arg.vec_len ? reinterpret_cast<uintptr_t>(scratch.data()) : 0;
  } else {
    arg.vec = 0;
    arg.vec_len = static_cast<__u64>(static_cast<int64_t>(vec_len));
  }
  long rc = ioctl(ArgInt(info, 0), PAGEMAP_SCAN, &arg);
  if (rc < 0) return Napi::Number::New(env, -errno);
  Napi::Float64Array out = info[13].As<Napi::Float64Array>();
  uint64_t covered = 0;
  if (have_vec) {
    size_t n = std::min(static_cast<size_t>(rc), static_cast<size_t>(arg.vec_len));
    for (size_t i = 0; i < n; i++) {
      starts[i] = scratch[i].start;
      ends[i] = scratch[i].end;
      categories[i] = static_cast<uint32_t>(scratch[i].categories);
      covered += scratch[i].end - scratch[i].start;
    }
  }
  if (out.ElementLength() >= 1) out[0] = static_cast<double>(arg.walk_end);
  if (out.ElementLength() >= 2) out[1] = static_cast<double>(covered);
  return Napi::Number::New(env, static_cast<double>(rc));
}

// pagemapScanProbe(fd, address) -> -errno: vm_util.c's pagemap_scan_supported(). The vector
// address is ~0 on purpose (never dereferenced: access_ok() fails), so EFAULT means the ioctl
// exists and ENOTTY/EINVAL means it does not.
Napi::Value PagemapScanProbe(const Napi::CallbackInfo& info) {
  long page_size = sysconf(_SC_PAGESIZE);
  struct pm_scan_arg arg = {};
  arg.size = sizeof(arg);
  arg.start = ArgAddress(info, 1);
  arg.end = arg.start + page_size;
  arg.vec = ~0ULL;
  arg.vec_len = 1;
  arg.category_anyof_mask = PAGE_IS_PRESENT;
  arg.return_mask = PAGE_IS_PRESENT;
  return Result(info.Env(), ioctl(ArgInt(info, 0), PAGEMAP_SCAN, &arg));
}

}  // namespace

void InitPagemap(Napi::Env env, Napi::Object exports) {
  exports.Set("pagemapEntries", Napi::Function::New(env, PagemapEntries, "pagemapEntries"));
  // PAGEMAP_SCAN functions are registered below this line by the write-tracking work.
  exports.Set("pagemapScan", Napi::Function::New(env, PagemapScan, "pagemapScan"));
  exports.Set("pagemapScanProbe", Napi::Function::New(env, PagemapScanProbe, "pagemapScanProbe"));

  Napi::Object c = Napi::Object::New(env);
  SetConst(c, "PAGE_IS_WPALLOWED", PAGE_IS_WPALLOWED);
  SetConst(c, "PAGE_IS_WRITTEN", PAGE_IS_WRITTEN);
  SetConst(c, "PAGE_IS_FILE", PAGE_IS_FILE);
  SetConst(c, "PAGE_IS_PRESENT", PAGE_IS_PRESENT);
  SetConst(c, "PAGE_IS_SWAPPED", PAGE_IS_SWAPPED);
  SetConst(c, "PAGE_IS_PFNZERO", PAGE_IS_PFNZERO);
  SetConst(c, "PAGE_IS_HUGE", PAGE_IS_HUGE);
  SetConst(c, "PAGE_IS_SOFT_DIRTY", PAGE_IS_SOFT_DIRTY);
  SetConst(c, "PAGE_IS_GUARD", PAGE_IS_GUARD);
  SetConst(c, "PM_SCAN_WP_MATCHING", PM_SCAN_WP_MATCHING);
  SetConst(c, "PM_SCAN_CHECK_WPASYNC", PM_SCAN_CHECK_WPASYNC);
  exports.Set("pagemapConstants", c);
}

}  // namespace memdedup
