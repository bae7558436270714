// pagemap family: /proc/self/pagemap reads (entries) and the PAGEMAP_SCAN ioctl.
// Results are written into caller-provided typed arrays: no per-page JS objects.
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include "addon.h"
#include "compat.h"
#include "pagemap.h"

namespace memdedup {
namespace {

using namespace pagemap_entry;
// Flag byte of each entry, exported as ENTRY_* (lib/pagemap.ts PageFlag).
enum : uint8_t { kPresent = 1, kSwapped = 2, kFile = 4, kExclusive = 8, kSoftDirty = 16, kUffdWp = 32 };

// pagemapEntries(fd, address, pages, pfns: BigUint64Array, flags: Uint8Array) -> pages | -errno
// pread()s the raw entries straight into pfns, then decodes them in place.
Napi::Value PagemapEntries(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(address, ArgU64(info, 1));
  MEMDEDUP_ARG(pages, ArgU64(info, 2));
  MEMDEDUP_ARG(pfns, ArgTypedArray<uint64_t>(info, 3, pages));
  MEMDEDUP_ARG(flags, ArgTypedArray<uint8_t>(info, 4, pages));
  uint64_t* entries = pfns.data;
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
    flags.data[i] = (present ? kPresent : 0) | (((e >> kSwappedBit) & 1) ? kSwapped : 0) |
                    (((e >> kFileBit) & 1) ? kFile : 0) | (((e >> kExclusiveBit) & 1) ? kExclusive : 0) |
                    (((e >> kSoftDirtyBit) & 1) ? kSoftDirty : 0) | (((e >> kUffdWpBit) & 1) ? kUffdWp : 0);
    entries[i] = present ? (e & kPfnMask) : 0;
  }
  return Napi::Number::New(info.Env(), static_cast<double>(got));
}

// pm_scan_arg as lib/pagemap.ts passes it: a BigUint64Array of the struct's fields in struct order
// (each slot is its field's offset / 8), then one output slot: the pagemapScanArg layout.
#define MEMDEDUP_SCAN_SLOT(field) (offsetof(struct pm_scan_arg, field) / sizeof(uint64_t))
constexpr size_t kScanArgFields = sizeof(struct pm_scan_arg) / sizeof(uint64_t);
constexpr size_t kScanWalkEnd = MEMDEDUP_SCAN_SLOT(walk_end), kScanCovered = kScanArgFields, kScanArgLength = kScanArgFields + 1;
// A scratch vector this small stays allocated per thread; larger ones live for one call only.
constexpr size_t kKeptScratch = 256;

// pagemapScan(fd, arg: BigUint64Array(kScanArgLength), starts, ends, categories) -> regions | -errno
// PAGEMAP_SCAN into a native scratch vector, then split into the caller's three arrays (each
// re-checked here for type and room for vec_len regions), or with all three null vec = 0. The
// scratch vector is sized by the range (a region covers at least one page), never by vec_len
// alone. On success arg[kScanWalkEnd] = walk_end (where a full vector or max_pages stopped the
// walk) and arg[kScanCovered] = bytes covered by the returned regions (summed here: BigInt arithmetic per region in
// JS costs ~30 ns each). size and vec are set here, whatever arg holds.
Napi::Value PagemapScan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(raw, ArgTypedArray<uint64_t>(info, 1, kScanArgLength));
  struct pm_scan_arg arg;
  static_assert(sizeof(arg) % sizeof(uint64_t) == 0, "pm_scan_arg: 64-bit fields only, one slot each");
  memcpy(&arg, raw.data, sizeof(arg));
  arg.size = sizeof(arg);
  std::optional<ArrayArg<uint64_t>> starts, ends;
  std::optional<ArrayArg<uint32_t>> categories;
  std::vector<page_region> once;
  static thread_local std::vector<page_region> kept;
  page_region* scratch = nullptr;
  bool have_vec = !(info[2].IsNull() && info[3].IsNull() && info[4].IsNull());
  if (have_vec) {
    if (!(starts = ArgTypedArray<uint64_t>(info, 2, arg.vec_len))) return env.Undefined();
    if (!(ends = ArgTypedArray<uint64_t>(info, 3, arg.vec_len))) return env.Undefined();
    if (!(categories = ArgTypedArray<uint32_t>(info, 4, arg.vec_len))) return env.Undefined();
    long page_size = sysconf(_SC_PAGESIZE);
    uint64_t range_pages = arg.end > arg.start ? (arg.end - arg.start) / page_size + 2 : 1;
    size_t needed = static_cast<size_t>(std::min<uint64_t>(arg.vec_len, range_pages));
    if (needed <= kKeptScratch) {
      if (kept.size() < kKeptScratch) kept.resize(kKeptScratch);
      scratch = kept.data();
    } else {
      once.resize(needed);
      scratch = once.data();
    }
    arg.vec_len = needed;
    arg.vec = needed ? reinterpret_cast<uintptr_t>(scratch) : 0;
  } else {
    arg.vec = 0;
  }
  long rc = ioctl(fd, PAGEMAP_SCAN, &arg);
  if (rc < 0) return Napi::Number::New(env, -errno);
  uint64_t covered = 0;
  if (have_vec) {
    size_t n = std::min(static_cast<size_t>(rc), static_cast<size_t>(arg.vec_len));
    for (size_t i = 0; i < n; i++) {
      starts->data[i] = scratch[i].start;
      ends->data[i] = scratch[i].end;
      categories->data[i] = static_cast<uint32_t>(scratch[i].categories);
      covered += scratch[i].end - scratch[i].start;
    }
  }
  raw.data[kScanWalkEnd] = arg.walk_end;
  raw.data[kScanCovered] = covered;
  return Napi::Number::New(env, static_cast<double>(rc));
}

// pagemapScanProbe(fd, address) -> -errno: vm_util.c's pagemap_scan_supported(). The vector
// address is ~0 on purpose (never dereferenced: access_ok() fails), so EFAULT means the ioctl
// exists and ENOTTY/EINVAL means it does not.
Napi::Value PagemapScanProbe(const Napi::CallbackInfo& info) {
  long page_size = sysconf(_SC_PAGESIZE);
  struct pm_scan_arg arg = {};
  arg.size = sizeof(arg);
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(address, ArgU64(info, 1));
  arg.start = address;
  arg.end = arg.start + page_size;
  arg.vec = ~0ULL;
  arg.vec_len = 1;
  arg.category_anyof_mask = PAGE_IS_PRESENT;
  arg.return_mask = PAGE_IS_PRESENT;
  return Result(info.Env(), ioctl(fd, PAGEMAP_SCAN, &arg));
}

}  // namespace

void InitPagemap(Napi::Env env, Napi::Object exports) {
  Export<PagemapEntries>(exports, "pagemapEntries");
  Export<PagemapScan>(exports, "pagemapScan");
  Export<PagemapScanProbe>(exports, "pagemapScanProbe");

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
  SetConst(c, "ENTRY_PRESENT", kPresent);
  SetConst(c, "ENTRY_SWAPPED", kSwapped);
  SetConst(c, "ENTRY_FILE", kFile);
  SetConst(c, "ENTRY_EXCLUSIVE", kExclusive);
  SetConst(c, "ENTRY_SOFT_DIRTY", kSoftDirty);
  SetConst(c, "ENTRY_UFFD_WP", kUffdWp);
  exports.Set("pagemapConstants", c);
  ExportLayout(exports, "pagemapScanArg", kScanArgLength,
               {{"size", MEMDEDUP_SCAN_SLOT(size)}, {"flags", MEMDEDUP_SCAN_SLOT(flags)}, {"start", MEMDEDUP_SCAN_SLOT(start)},
                {"end", MEMDEDUP_SCAN_SLOT(end)}, {"walkEnd", MEMDEDUP_SCAN_SLOT(walk_end)}, {"vec", MEMDEDUP_SCAN_SLOT(vec)},
                {"vecLen", MEMDEDUP_SCAN_SLOT(vec_len)}, {"maxPages", MEMDEDUP_SCAN_SLOT(max_pages)},
                {"categoryInverted", MEMDEDUP_SCAN_SLOT(category_inverted)}, {"categoryMask", MEMDEDUP_SCAN_SLOT(category_mask)},
                {"categoryAnyofMask", MEMDEDUP_SCAN_SLOT(category_anyof_mask)}, {"returnMask", MEMDEDUP_SCAN_SLOT(return_mask)},
                {"covered", kScanCovered}});
}

}  // namespace memdedup
