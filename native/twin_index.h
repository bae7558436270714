// The twin index, shared by twin_index.cc (TwinIndex and hashPages for lib/twin_index.ts) and
// dedup.cc (the Deduplicator's pass): the page hash its entries are keyed by, the table in its
// sealed memfd, and the single-word CAS updates. Inline: the pass calls them once per page.
#pragma once
#include "addon.h"
#include "xxh64.h"

#include <cstring>
#include <optional>

namespace memdedup {

// ---- Twin index: "the unstable tree in user space" ---------------------------------------------
// A memfd of kIndexHeader bytes + slots 64-bit words, sealed against shrinking and growing (a
// participant can never make another one's mapping SIGBUS) and mapped MAP_SHARED by every
// cooperating process. Each word is one entry: the top 48 bits of a content hash (the tag) and a
// 16-bit count of pages holding that content anywhere. Every update is one CAS on one word, so a
// process killed at any instruction leaves no half-written entry and no lock behind; what it
// loses is only its decrements (its pages stay counted as holders: a later page may then be
// offered to the kernel for a merge that finds no twin, which the kernel's own compare refuses).
// A slot whose count is 0 is free for any tag; an entry is looked up in a window of kProbe slots
// and its holders are summed over that window, so two processes claiming two slots for the same
// new tag at once still count together. A word never returns to 0 once used (tags are non-zero)
// and an insert takes the first free slot of its window, so a never-used slot ends every search.
// A never-used slot is the zero word: what a fresh memfd reads as, so creating an index writes its
// header page only, and nothing reads a page of slots no entry ever landed in (a read fault on a
// shmem hole allocates the page: there is no shared zero page), so an index commits memory only
// for the pages its entries use, whatever its size.
constexpr uint64_t kIndexMagic = 0x31786564696d646dULL;  // "mdmidex1"
constexpr size_t kIndexHeader = 64;
// Header words: 0 magic, 1 slots, 2 the merge turn (twin_index.cc).
constexpr size_t kHeaderTurn = 2;
constexpr uint64_t kCountMask = 0xffff, kCountMax = 0xffff;
constexpr unsigned kProbe = 32;
constexpr uint64_t kMaxSlots = 1ULL << 28;  // TwinIndex.maxSlots (lib/twin_index.ts)

struct TwinTable {
  int fd = -1;
  void* base = nullptr;
  size_t bytes = 0;
  uint64_t slots = 0;
  uint64_t* words = nullptr;  // inside base, after the header
};

inline uint64_t Tag(uint64_t hash) {
  uint64_t tag = hash >> 16;
  return tag != 0 ? tag : 1;
}
inline uint64_t LoadWord(uint64_t* w) { return __atomic_load_n(w, __ATOMIC_ACQUIRE); }
inline bool CasWord(uint64_t* w, uint64_t* expected, uint64_t desired) {
  return __atomic_compare_exchange_n(w, expected, desired, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

// Holders of `hash`'s content: counts of every entry with its tag in its probe window.
inline uint32_t IndexHolders(const TwinTable& t, uint64_t hash) {
  uint64_t tag = Tag(hash), mask = t.slots - 1, sum = 0;
  for (unsigned i = 0; i < kProbe; i++) {
    uint64_t w = LoadWord(&t.words[(hash + i) & mask]);
    if (w == 0) break;
    if ((w >> 16) == tag) sum += w & kCountMask;
  }
  return static_cast<uint32_t>(sum > 0xffffffffULL ? 0xffffffffULL : sum);
}

// Counts one more holder of `hash`. Returns false when the window is full of other live tags.
inline bool IndexInsert(const TwinTable& t, uint64_t hash) {
  uint64_t tag = Tag(hash), mask = t.slots - 1;
  for (unsigned i = 0; i < kProbe; i++) {  // an entry with our tag: one more holder
    uint64_t* slot = &t.words[(hash + i) & mask];
    uint64_t w = LoadWord(slot);
    if (w == 0) break;
    while ((w >> 16) == tag) {
      if ((w & kCountMask) == kCountMax) return true;  // saturated: stays counted
      if (CasWord(slot, &w, w + 1)) return true;
    }
  }
  for (unsigned i = 0; i < kProbe; i++) {  // else claim a free slot (never used, or count 0)
    uint64_t* slot = &t.words[(hash + i) & mask];
    uint64_t w = LoadWord(slot);
    while ((w & kCountMask) == 0 || (w >> 16) == tag) {
      uint64_t desired = (w >> 16) == tag ? w + 1 : (tag << 16) | 1;
      if ((w & kCountMask) == kCountMax) return true;
      if (CasWord(slot, &w, desired)) return true;
    }
  }
  return false;
}

// One holder of `hash` fewer (a saturated entry stays saturated: its true count is unknown).
inline void IndexRelease(const TwinTable& t, uint64_t hash) {
  uint64_t tag = Tag(hash), mask = t.slots - 1;
  for (unsigned i = 0; i < kProbe; i++) {
    uint64_t* slot = &t.words[(hash + i) & mask];
    uint64_t w = LoadWord(slot);
    if (w == 0) return;
    while ((w >> 16) == tag && (w & kCountMask) > 0) {
      if ((w & kCountMask) == kCountMax) return;
      if (CasWord(slot, &w, w - 1)) return;
    }
  }
}

// The table behind argument i: an External twin_index.cc created (type-tagged) and, unless
// `closed_ok`, still open. Anything else is a TypeError: lib/ checks TwinIndex.closed right before
// every call, so only a caller that bypassed lib/ can pass a closed one (no -EBADF: no syscall
// would have returned it).
std::optional<TwinTable*> ArgTable(const Napi::CallbackInfo& info, size_t i, bool closed_ok = false);

}  // namespace memdedup
