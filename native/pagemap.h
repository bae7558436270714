// Bits of a /proc/pid/pagemap entry (Documentation/admin-guide/mm/pagemap.rst), for pagemap.cc
// (pagemapEntries decodes them) and dedup.cc (a merged page's entry, read during a pass).
#pragma once
#include <cstdint>

namespace memdedup {
namespace pagemap_entry {
constexpr uint64_t kPfnMask = (1ULL << 55) - 1;
constexpr int kSoftDirtyBit = 55, kExclusiveBit = 56, kUffdWpBit = 57, kFileBit = 61, kSwappedBit = 62, kPresentBit = 63;
}  // namespace pagemap_entry
}  // namespace memdedup
