// Page content for the user-space deduplicator: hashing of whole pages, the cross-process twin
// index (a hash table in a sealed shared memfd, updated only by single-word CAS), and the
// deduplicator's per-pass loop (one PAGEMAP_SCAN, candidate selection, hashing, twin lookup,
// merge runs). Reads memory of live Regions whose pages lib/ has checked are readable, through
// the mapping only where it cannot vanish under the reader (private anonymous pages of the base
// size: hugetlb, file and shared memory is copied through the kernel, EFAULT instead of SIGBUS);
// writes only into typed arrays it re-checked and into the index mapping it created itself. An
// allocation failure is -ENOMEM, never an abort (NoAbort, at the bottom).
#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include "addon.h"
#include "compat.h"

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

// PROCMAP_QUERY (Linux 6.11+, include/uapi/linux/fs.h): one VMA of /proc/self/maps by address.
// Declared here under our own name: the build host's headers (6.1) do not have it.
struct ProcmapQuery {
  uint64_t size, query_flags, query_addr;
  uint64_t vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode;
  uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
  uint64_t vma_name_addr, build_id_addr;
};
constexpr unsigned long kProcmapQuery = _IOWR('f', 17, ProcmapQuery);
constexpr uint64_t kProcmapReadable = 0x01, kProcmapShared = 0x08;

// Whether every page of [address, address + length) may be read through its mapping: only
// private anonymous memory of the base page size (no file behind it, not hugetlb) cannot vanish
// under a reader. A hugetlb page can be punched out (MADV_REMOVE, fallocate PUNCH_HOLE, by any
// process holding the file) and, once another mapping took the freed huge page, touching the hole
// is SIGBUS; a file can be truncated. Asked of the kernel per VMA (PROCMAP_QUERY), whatever lib/
// said; without PROCMAP_QUERY (before 6.11) or on any error the answer is no.
bool MayTouchDirectly(uint64_t address, uint64_t length, uint64_t page_size) {
  const int maps = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (maps < 0) return false;
  bool direct = true;
  for (uint64_t at = address, end = address + length; direct && at < end;) {
    ProcmapQuery q = {};
    q.size = sizeof q;
    q.query_addr = at;
    direct = ioctl(maps, kProcmapQuery, &q) == 0 && q.vma_start <= at && q.vma_end > at && q.inode == 0 &&
             q.dev_major == 0 && q.dev_minor == 0 && q.vma_page_size == page_size &&
             (q.vma_flags & kProcmapReadable) && !(q.vma_flags & kProcmapShared);
    at = q.vma_end;
  }
  close(maps);
  return direct;
}

// Pages copied through the kernel per pread in hashPages.
constexpr size_t kHashBatch = 64;

// hashPages(address, pageIndexes: Uint32Array, count, out: BigUint64Array, throughKernel) -> count | -errno
// Hashes the pages at address + index * pageSize; indexes lib/ validated against the Region.
// Memory that can vanish under a reader (throughKernel: a file-backed Region, whose file someone
// may truncate; or, whatever lib/ said, any VMA MayTouchDirectly refuses: hugetlb, shared or file
// memory) is copied through the kernel first, a batch of consecutive pages per pread of
// /proc/self/mem (ReadOwnMemory): a page gone from under the mapping (past a truncated file's end,
// a punched hugetlb hole with no free huge page) is EFAULT instead of a SIGBUS in this process.
// Nothing is written to out before every allocation is done.
Napi::Value HashPages(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(address, ArgU64(info, 0));
  MEMDEDUP_ARG(count, ArgU64(info, 2));
  MEMDEDUP_ARG(indexes, ArgTypedArray<uint32_t>(info, 1, count));
  MEMDEDUP_ARG(out, ArgTypedArray<uint64_t>(info, 3, count));
  MEMDEDUP_ARG(through_kernel, ArgInt(info, 4, 0, 1));
  const unsigned char* base = reinterpret_cast<const unsigned char*>(address);
  const size_t page_size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (count == 0) return Napi::Number::New(info.Env(), 0);
  uint64_t lowest = indexes.data[0], highest = indexes.data[0];
  for (size_t i = 1; i < count; i++) {
    lowest = std::min<uint64_t>(lowest, indexes.data[i]);
    highest = std::max<uint64_t>(highest, indexes.data[i]);
  }
  if (!through_kernel && MayTouchDirectly(address + lowest * page_size, (highest + 1 - lowest) * page_size, page_size)) {
    for (size_t i = 0; i < count; i++) out.data[i] = HashPage(base + static_cast<size_t>(indexes.data[i]) * page_size, page_size);
    return Napi::Number::New(info.Env(), static_cast<double>(count));
  }
  std::vector<unsigned char> copy(kHashBatch * page_size);
  for (size_t i = 0; i < count;) {
    size_t n = 1;  // consecutive page indexes from i: one read
    while (i + n < count && n < kHashBatch && indexes.data[i + n] == indexes.data[i + n - 1] + 1) n++;
    if (ReadOwnMemory(copy.data(), address + static_cast<size_t>(indexes.data[i]) * page_size, n * page_size) < 0) {
      return Napi::Number::New(info.Env(), -errno);
    }
    for (size_t k = 0; k < n; k++) out.data[i + k] = HashPage(copy.data() + k * page_size, page_size);
    i += n;
  }
  return Napi::Number::New(info.Env(), static_cast<double>(count));
}

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
// Header words: 0 magic, 1 slots, 2 the merge turn (below).
constexpr size_t kHeaderTurn = 2;
constexpr uint64_t kCountMask = 0xffff, kCountMax = 0xffff;
constexpr unsigned kProbe = 32;
constexpr uint64_t kMaxSlots = 1ULL << 28;  // TwinIndex.maxSlots (lib/content.ts)

struct TwinTable {
  int fd = -1;
  void* base = nullptr;
  size_t bytes = 0;
  uint64_t slots = 0;
  uint64_t* words = nullptr;  // inside base, after the header
};

const napi_type_tag kTwinTableTag = {0x6d656d6465647570ULL, 0x7477696e696e6478ULL};

void CloseTable(TwinTable* t) {
  if (t->base != nullptr) munmap(t->base, t->bytes);
  if (t->fd >= 0) close(t->fd);
  t->base = nullptr;
  t->words = nullptr;
  t->fd = -1;
}

inline uint64_t Tag(uint64_t hash) {
  uint64_t tag = hash >> 16;
  return tag != 0 ? tag : 1;
}
inline uint64_t LoadWord(uint64_t* w) { return __atomic_load_n(w, __ATOMIC_ACQUIRE); }
inline bool CasWord(uint64_t* w, uint64_t* expected, uint64_t desired) {
  return __atomic_compare_exchange_n(w, expected, desired, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

// Holders of `hash`'s content: counts of every entry with its tag in its probe window.
uint32_t IndexHolders(const TwinTable& t, uint64_t hash) {
  uint64_t tag = Tag(hash), mask = t.slots - 1, sum = 0;
  for (unsigned i = 0; i < kProbe; i++) {
    uint64_t w = LoadWord(&t.words[(hash + i) & mask]);
    if (w == 0) break;
    if ((w >> 16) == tag) sum += w & kCountMask;
  }
  return static_cast<uint32_t>(sum > 0xffffffffULL ? 0xffffffffULL : sum);
}

// Counts one more holder of `hash`. Returns false when the window is full of other live tags.
bool IndexInsert(const TwinTable& t, uint64_t hash) {
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
void IndexRelease(const TwinTable& t, uint64_t hash) {
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

// ---- The merge turn ----------------------------------------------------------------------------
// MADV_MERGE serialises every caller on the kernel's ksm_thread_mutex, and a waiter spins while
// the holder runs: on the lab's 2 CPUs, 4-8 processes merging at once spent 142-159 us of CPU per
// page against 86 us for one alone, for no more pages per second. So processes sharing an index
// may take turns (Deduplicator mergeTurns, TwinIndex.tryMergeTurn): one header word holds the
// thread id of the merger (22 bits, pid_max's limit)
// and the CLOCK_MONOTONIC millisecond its turn ends (42 bits). A turn is free when the word is 0,
// expired, or its thread is gone (a merger killed mid-turn holds nobody up for long). One CAS
// takes it, one gives it back.
constexpr int kTurnTidBits = 22;
constexpr uint64_t kTurnTimeMask = (1ULL << (64 - kTurnTidBits)) - 1;

inline uint64_t MonotonicMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000ULL + static_cast<uint64_t>(ts.tv_nsec) / 1000000ULL;
}

// Takes the turn for lease_ms: the word written (non-zero), or 0 when another live thread has it.
uint64_t TurnTake(const TwinTable& t, uint64_t lease_ms) {
  uint64_t* word = static_cast<uint64_t*>(t.base) + kHeaderTurn;
  uint64_t tid = static_cast<uint64_t>(syscall(SYS_gettid)) & ((1ULL << kTurnTidBits) - 1);
  uint64_t now = MonotonicMs();
  uint64_t desired = (tid << (64 - kTurnTidBits)) | ((now + lease_ms) & kTurnTimeMask);
  uint64_t w = LoadWord(word);
  for (;;) {
    if (w != 0) {
      pid_t owner = static_cast<pid_t>(w >> (64 - kTurnTidBits));
      bool expired = (w & kTurnTimeMask) <= (now & kTurnTimeMask);
      // Another thread's unexpired turn holds while that thread exists (EPERM: it does).
      if (static_cast<uint64_t>(owner) != tid && !expired && (kill(owner, 0) == 0 || errno == EPERM)) return 0;
    }
    if (CasWord(word, &w, desired)) return desired;
  }
}

// Gives the turn back if it is still the one `taken` took (an expired turn may be someone else's now).
void TurnGive(const TwinTable& t, uint64_t taken) {
  uint64_t* word = static_cast<uint64_t*>(t.base) + kHeaderTurn;
  uint64_t expected = taken;
  CasWord(word, &expected, 0);
}

// The handle owns the table from here. If it cannot be made (std::bad_alloc, rethrown for
// NoAbort), the table is unmapped and freed, and its fd closed only when `owns_fd` (an fd the
// caller passed in stays the caller's on failure).
Napi::Value NewTableHandle(Napi::Env env, TwinTable* table, bool owns_fd) {
  Napi::External<TwinTable> external;
  try {
    external = Napi::External<TwinTable>::New(env, table, [](Napi::Env, TwinTable* t) {
      CloseTable(t);
      delete t;
    });
  } catch (const std::bad_alloc&) {
    if (!owns_fd) table->fd = -1;
    CloseTable(table);
    delete table;
    throw;
  }
  napi_type_tag_object(env, external, &kTwinTableTag);
  return external;
}

// The open table behind argument i: an External this file created (type-tagged), not closed.
// A closed table is -EBADF for the caller (*closed = true), anything else a TypeError.
TwinTable* ArgTable(const Napi::CallbackInfo& info, size_t i, bool* closed) {
  bool tagged = false;
  *closed = false;
  if (info[i].Type() != napi_external || napi_check_object_type_tag(info.Env(), info[i], &kTwinTableTag, &tagged) != napi_ok || !tagged) {
    ThrowArgument(info, i, false, "a twin index handle");
    return nullptr;
  }
  TwinTable* t = info[i].As<Napi::External<TwinTable>>().Data();
  if (t->words == nullptr) {
    *closed = true;
    return nullptr;
  }
  return t;
}

#define MEMDEDUP_TABLE(var, i)                                              \
  bool var##_closed;                                                        \
  TwinTable* var = ArgTable(info, i, &var##_closed);                        \
  if (var##_closed) return Napi::Number::New(info.Env(), -EBADF);           \
  if (var == nullptr) return info.Env().Undefined()

// twinIndexCreate(slots) -> handle | -errno. slots: a power of two lib/ checked (re-checked here).
// The slots are left as the memfd gives them, zero (free): only the header is written.
Napi::Value TwinIndexCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MEMDEDUP_ARG(slots, ArgU64(info, 0, static_cast<double>(kMaxSlots)));
  if (slots < kProbe || (slots & (slots - 1)) != 0) {
    ThrowArgument(info, 0, true, "a power of two >= 32");
    return env.Undefined();
  }
  auto* t = new TwinTable();  // first: a std::bad_alloc (NoAbort) leaves nothing behind
  t->slots = slots;
  t->bytes = kIndexHeader + slots * sizeof(uint64_t);
  t->fd = memfd_create("memdedup-twin-index", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (t->fd < 0 || ftruncate(t->fd, static_cast<off_t>(t->bytes)) < 0 ||
      fcntl(t->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
    int error = errno;
    CloseTable(t);
    delete t;
    return Napi::Number::New(env, -error);
  }
  void* base = mmap(nullptr, t->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, t->fd, 0);
  if (base == MAP_FAILED) {
    int error = errno;
    CloseTable(t);
    delete t;
    return Napi::Number::New(env, -error);
  }
  t->base = base;
  t->words = reinterpret_cast<uint64_t*>(static_cast<char*>(base) + kIndexHeader);
  uint64_t* header = static_cast<uint64_t*>(base);
  header[1] = slots;
  __atomic_store_n(&header[0], kIndexMagic, __ATOMIC_RELEASE);
  return NewTableHandle(env, t, true);
}

// twinIndexOpen(fd) -> handle | -errno | 1 (not sealed against shrink and grow) | 2 (not a twin
// index: size or header). Takes ownership of fd only on success.
Napi::Value TwinIndexOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) return Napi::Number::New(env, errno == EINVAL ? 1 : -errno);  // EINVAL: not a memfd
  if ((seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) return Napi::Number::New(env, 1);
  struct stat st;
  if (fstat(fd, &st) < 0) return Napi::Number::New(env, -errno);
  size_t bytes = static_cast<size_t>(st.st_size);
  if (bytes < kIndexHeader + kProbe * sizeof(uint64_t)) return Napi::Number::New(env, 2);
  // Allocated before the mapping: a std::bad_alloc (NoAbort) leaves nothing behind.
  std::unique_ptr<TwinTable> table(new TwinTable());
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return Napi::Number::New(env, -errno);
  uint64_t* header = static_cast<uint64_t*>(base);
  uint64_t slots = header[1];
  if (__atomic_load_n(&header[0], __ATOMIC_ACQUIRE) != kIndexMagic || slots < kProbe || (slots & (slots - 1)) != 0 ||
      slots > kMaxSlots || kIndexHeader + slots * sizeof(uint64_t) != bytes) {
    munmap(base, bytes);
    return Napi::Number::New(env, 2);
  }
  TwinTable* t = table.release();
  t->fd = fd;
  t->base = base;
  t->bytes = bytes;
  t->slots = slots;
  t->words = reinterpret_cast<uint64_t*>(static_cast<char*>(base) + kIndexHeader);
  return NewTableHandle(env, t, false);
}

// twinIndexClose(handle) -> 0: unmaps and closes now (idempotent); the finalizer frees the rest.
Napi::Value TwinIndexClose(const Napi::CallbackInfo& info) {
  MEMDEDUP_TABLE(t, 0);
  CloseTable(t);
  return Napi::Number::New(info.Env(), 0);
}

// Entries with a holder, counted over the slots in the memfd's data ranges only (lseek SEEK_DATA /
// SEEK_HOLE; a swapped-out page is data too): a hole is all free slots, and reading it through the
// mapping would allocate it. Returns the count, or -1 with errno set. The descriptor's file offset
// (meaningless for an index; shared with a child that inherited it) is put back.
int64_t CountUsedSlots(const TwinTable& t) {
  const off_t first = static_cast<off_t>(kIndexHeader);
  const off_t end = static_cast<off_t>(kIndexHeader + t.slots * sizeof(uint64_t));
  const off_t saved = lseek(t.fd, 0, SEEK_CUR);
  uint64_t used = 0;
  int error = 0;
  for (off_t pos = first; pos < end;) {
    off_t data = lseek(t.fd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno != ENXIO) error = errno;  // ENXIO: no data after pos
      break;
    }
    if (data >= end) break;
    off_t hole = lseek(t.fd, data, SEEK_HOLE);
    if (hole < 0) {
      error = errno;
      break;
    }
    if (hole > end || hole <= data) hole = end;  // hole <= data: cannot happen; never loop forever
    // data and hole are page boundaries or pos itself: both kIndexHeader + a multiple of 8.
    for (uint64_t i = static_cast<uint64_t>(std::max(data, first) - first) / sizeof(uint64_t),
                  last = static_cast<uint64_t>(hole - first) / sizeof(uint64_t);
         i < last && i < t.slots; i++) {
      used += (LoadWord(&t.words[i]) & kCountMask) != 0;
    }
    pos = hole;
  }
  if (saved >= 0) lseek(t.fd, saved, SEEK_SET);
  if (error != 0) {
    errno = error;
    return -1;
  }
  return static_cast<int64_t>(used);
}

// twinIndexInfo(handle, out: Float64Array(2 or more)) -> 0 | -EBADF | -errno; out = [fd, slots],
// and when out has a third element, out[2] = used slots (CountUsedSlots: it reads the index).
Napi::Value TwinIndexInfo(const Napi::CallbackInfo& info) {
  MEMDEDUP_TABLE(t, 0);
  MEMDEDUP_ARG(out, ArgTypedArray<double>(info, 1, 2));
  if (out.length >= 3) {
    int64_t used = CountUsedSlots(*t);
    if (used < 0) return Napi::Number::New(info.Env(), -errno);
    out.data[2] = static_cast<double>(used);
  }
  out.data[0] = t->fd;
  out.data[1] = static_cast<double>(t->slots);
  return Napi::Number::New(info.Env(), 0);
}

// twinIndexUpdate(handle, hashes: BigUint64Array, count, delta (-1 | 0 | 1), holders: Uint32Array)
// -> count | -EBADF | -ENOSPC (an insert found its window full; holders are filled up to there).
// delta 1 counts one more holder of each hash, -1 one fewer, 0 only looks; holders[i] = the
// holders of hashes[i] right after its own update.
Napi::Value TwinIndexUpdate(const Napi::CallbackInfo& info) {
  MEMDEDUP_TABLE(t, 0);
  MEMDEDUP_ARG(count, ArgU64(info, 2));
  MEMDEDUP_ARG(hashes, ArgTypedArray<uint64_t>(info, 1, count));
  MEMDEDUP_ARG(delta, ArgInt(info, 3, -1, 1));
  MEMDEDUP_ARG(holders, ArgTypedArray<uint32_t>(info, 4, count));
  for (size_t i = 0; i < count; i++) {
    if (delta > 0 && !IndexInsert(*t, hashes.data[i])) return Napi::Number::New(info.Env(), -ENOSPC);
    if (delta < 0) IndexRelease(*t, hashes.data[i]);
    holders.data[i] = IndexHolders(*t, hashes.data[i]);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(count));
}

// twinIndexTakeTurn(handle, leaseMs) -> the turn's word as a BigInt (0n: another thread has it)
// | -EBADF. twinIndexGiveTurn(handle, word: BigInt) -> 0 | -EBADF.
Napi::Value TwinIndexTakeTurn(const Napi::CallbackInfo& info) {
  MEMDEDUP_TABLE(t, 0);
  MEMDEDUP_ARG(lease_ms, ArgU64(info, 1, 3600000.0));
  return Napi::BigInt::New(info.Env(), TurnTake(*t, lease_ms));
}
Napi::Value TwinIndexGiveTurn(const Napi::CallbackInfo& info) {
  MEMDEDUP_TABLE(t, 0);
  bool lossless = false;
  if (!info[1].IsBigInt()) {
    ThrowArgument(info, 1, false, "a BigInt");
    return info.Env().Undefined();
  }
  uint64_t taken = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
  if (taken != 0 && lossless) TurnGive(*t, taken);
  return Napi::Number::New(info.Env(), 0);
}

// ---- The deduplicator's pass over one region -------------------------------------------------
// Per-page state word (a Uint32Array owned by lib/): bits 0-7 passes unwritten (saturating),
// kHeld the page's hash is counted in the index (hashes[page] holds it), kMerged merged by
// MADV_MERGE or marked MADV_MERGEABLE by us as a twin (or a cold page between twins), kCandidate
// chosen by this pass's scan for the merge step, kMarked (KSM) inside a range we marked
// MADV_MERGEABLE (kMerged pages, and pages marked only to keep the VMA budget: see DedupMerge),
// kUnmark (KSM) marked, written since its merge: to be given back with MADV_UNMERGEABLE,
// bits 16-31 back-off passes left. lib/deduplicator.ts reads kMarked (close(), untrack()).
constexpr uint32_t kCleanMask = 0xff, kHeld = 1u << 8, kMerged = 1u << 9, kCandidate = 1u << 10, kMarked = 1u << 11,
                   kUnmark = 1u << 12, kBackoffShift = 16;
enum PassMode { kModeNone = 0, kModeSksm = 1, kModeKsm = 2 };
// config: Float64Array [mode, stablePasses, backoffPasses, budgetNs (0: none): the CPU time this
// call may spend hashing (dedupScan) or merging (dedupMerge); dedupMerge: < 0, not this process's
// merge turn: look twins up and count them deferred, merge nothing; runAllowance (KSM): the most
// marked runs this region may hold after the call (lib/ shares vmaBudget / 2 among the regions;
// MADV_MERGEABLE splits a VMA at both ends of a run, so a run costs at most two VMAs)]
enum ConfigField { kCfgMode, kCfgStable, kCfgBackoff, kCfgBudgetNs, kCfgRunAllowance, kConfigLength };
// report: Float64Array, reset by dedupScan, completed by dedupMerge.
enum ReportField {
  kRepWritten,      // pages written since the last pass
  kRepCandidates,   // present, unwritten for stablePasses, not merged, not backing off
  kRepHashed,       // candidates hashed this pass (new to the index)
  kRepDuplicates,   // candidates with another holder of their content anywhere
  kRepMerged,       // pages passed to MADV_MERGE / marked MADV_MERGEABLE this pass
  kRepCow,          // merged (or marked) pages written since: they back off
  kRepMergedTotal,  // pages merged (or marked) by us now
  kRepUnmarked,     // KSM mode: written marked pages given back with MADV_UNMERGEABLE
  kRepDeferred,     // candidates left unhashed because the CPU budget ran out
  kRepIndexFull,    // candidates the index had no slot for
  kRepMergeReplaced,  // reported written but still shared (a kernel whose KSM merge drops uffd-wp)
  kRepCpuNs,        // thread CPU time of both calls
  kRepFailedStage,  // on -errno: 1 PAGEMAP_SCAN, 2 MADV_MERGE, 3 MADV_MERGEABLE, 4 MADV_UNMERGEABLE, 5 pagemap read
  kRepScanNs,       // thread CPU time of step 1 (the PAGEMAP_SCAN walk and the state update)
  kRepHashNs,       // of step 2 (candidates, hashing, index inserts)
  kRepMergeNs,      // of step 3 (twin lookups and the madvise calls)
  kRepMergeDeferred,  // duplicates left for a later pass: the budget ran out, or not our merge turn
  kRepCoarsened,    // KSM: pages marked (or left marked) only to keep the runs within runAllowance
  kRepMarkedRuns,   // KSM: runs of kMarked pages in the region after the call
  kReportLength
};

inline uint64_t ThreadCpuNs() {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ULL + static_cast<uint64_t>(ts.tv_nsec);
}

// Pages per madvise call in the merge step: the budget is checked between calls, and each call
// holds the mmap lock (MADV_MERGE: and ksm_thread_mutex) for one chunk only.
constexpr uint32_t kMergeChunk = 64;

// Runs of pages whose state has `bit`.
uint64_t CountRuns(const uint32_t* state, uint64_t pages, uint32_t bit) {
  uint64_t runs = 0;
  bool in = false;
  for (uint64_t page = 0; page < pages; page++) {
    bool has = (state[page] & bit) != 0;
    runs += has && !in;
    in = has;
  }
  return runs;
}

// Bits of a /proc/pid/pagemap entry (as in pagemap.cc).
constexpr int kEntryExclusiveBit = 56, kEntryPresentBit = 63;
// Pagemap entries read at once when a merged page is reported written (no allocation: a stack array).
constexpr uint32_t kEntryBlock = 512;

// dedupScan(pagemapFd, index, address, pages, state: Uint32Array, hashes: BigUint64Array,
//           config: Float64Array, report: Float64Array) -> 0 | -errno (report[kRepFailedStage] says where)
// Steps 1 and 2 of a pass over one region: collect writes (and give hot marked pages back to the
// kernel), then choose, hash and count the candidates in the index (marked kCandidate). The
// region [address, address + pages * pageSize) is a live, readable, private anonymous Region
// registered for uffd WP_ASYNC (lib/ checked it just before this call). Only pages PAGEMAP_SCAN
// reports present, not the zero page and not file-backed (a private anonymous page of this
// process: it cannot vanish under the reader) are ever read through the mapping.
// All memory is allocated before the first change to the state or the index: an allocation
// failure (ERR_MEMORY_ALLOCATION_FAILED, NoAbort) leaves everything as it was.
Napi::Value DedupScan(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t cpu_start = ThreadCpuNs();
  MEMDEDUP_ARG(pagemap_fd, ArgInt(info, 0, 0));
  MEMDEDUP_TABLE(table, 1);
  MEMDEDUP_ARG(address, ArgU64(info, 2));
  MEMDEDUP_ARG(pages, ArgU64(info, 3, 0xffffffffu));
  MEMDEDUP_ARG(state, ArgTypedArray<uint32_t>(info, 4, pages));
  MEMDEDUP_ARG(hashes, ArgTypedArray<uint64_t>(info, 5, pages));
  MEMDEDUP_ARG(config, ArgTypedArray<double>(info, 6, kConfigLength));
  MEMDEDUP_ARG(report, ArgTypedArray<double>(info, 7, kReportLength));
  for (size_t i = 0; i < kReportLength; i++) report.data[i] = 0;
  const size_t page_size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const int mode = static_cast<int>(config.data[kCfgMode]);
  const uint32_t stable = static_cast<uint32_t>(std::min(std::max(config.data[kCfgStable], 1.0), 255.0));
  const uint32_t backoff_passes = static_cast<uint32_t>(std::min(std::max(config.data[kCfgBackoff], 0.0), 65535.0));
  const double budget = config.data[kCfgBudgetNs] > 0 ? config.data[kCfgBudgetNs] : 0;
  const uint64_t allowance = static_cast<uint64_t>(std::min(std::max(config.data[kCfgRunAllowance], 0.0), 4294967295.0));
  const uint64_t end_address = address + pages * page_size;
  auto fail = [&](int stage, int error) {
    report.data[kRepFailedStage] = stage;
    report.data[kRepCpuNs] = static_cast<double>(ThreadCpuNs() - cpu_start);
    return Napi::Number::New(env, -error);
  };

  // Allocated before any change (a std::bad_alloc here leaves everything as it was: NoAbort).
  std::vector<uint8_t> eligible(pages);  // present, not the zero page, not file-backed
  static thread_local std::vector<page_region> vec;
  if (vec.size() < 1024) vec.resize(1024);

  // 1. Writes since the last pass, and what is present: one PAGEMAP_SCAN walk (several calls only
  //    when the vector fills). No category filter: every page is reported with its categories, and
  //    PM_SCAN_WP_MATCHING re-protects the written ones in the same walk.
  uint64_t entries[kEntryBlock];
  uint32_t entries_first = 0, entries_count = 0;  // entries[i] is page entries_first + i
  uint64_t start = address;
  while (start < end_address) {
    struct pm_scan_arg arg = {};
    arg.size = sizeof(arg);
    arg.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
    arg.start = start;
    arg.end = end_address;
    arg.vec = reinterpret_cast<uintptr_t>(vec.data());
    arg.vec_len = vec.size();
    arg.return_mask = PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_PFNZERO | PAGE_IS_FILE;
    long n = ioctl(pagemap_fd, PAGEMAP_SCAN, &arg);
    if (n < 0) return fail(1, errno);
    for (long r = 0; r < n && static_cast<size_t>(r) < vec.size(); r++) {
      const page_region& region = vec[r];
      if (region.start < address || region.end > end_address || region.start >= region.end) continue;
      uint32_t first = static_cast<uint32_t>((region.start - address) / page_size);
      uint32_t last = static_cast<uint32_t>((region.end - address) / page_size);
      bool written = region.categories & PAGE_IS_WRITTEN;
      bool present = (region.categories & PAGE_IS_PRESENT) && !(region.categories & (PAGE_IS_PFNZERO | PAGE_IS_FILE));
      for (uint32_t page = first; page < last; page++) {
        uint32_t s = state.data[page];
        eligible[page] = present;
        bool page_written = written;
        if (page_written && (s & kMerged) && present) {
          // Still shared with another mapping, so not written by us (a write would have COWed it):
          // a kernel without kernel-patches/0001 drops uffd-wp when ksmd maps the KSM page.
          if (page < entries_first || page >= entries_first + entries_count) {
            uint32_t want = std::min<uint32_t>(kEntryBlock, last - page);
            ssize_t got = pread(pagemap_fd, entries, want * sizeof(uint64_t),
                                static_cast<off_t>((address / page_size + page) * sizeof(uint64_t)));
            if (got < 0) return fail(5, errno);
            entries_first = page;
            entries_count = static_cast<uint32_t>(static_cast<size_t>(got) / sizeof(uint64_t));
          }
          size_t k = page - entries_first;
          if (k < entries_count && ((entries[k] >> kEntryPresentBit) & 1) && !((entries[k] >> kEntryExclusiveBit) & 1)) {
            report.data[kRepMergeReplaced]++;
            page_written = false;
          }
        }
        if (page_written) {
          report.data[kRepWritten]++;
          if (s & kHeld) IndexRelease(*table, hashes.data[page]);
          uint32_t back = s >> kBackoffShift;
          uint32_t keep = s & (kMarked | kUnmark);  // the VMA stays marked until unmarked below
          if (s & kMerged) {
            report.data[kRepCow]++;
            back = backoff_passes;
            if (mode == kModeKsm && (s & kMarked)) keep |= kUnmark;
          }
          state.data[page] = (back << kBackoffShift) | keep;
          continue;
        }
        uint32_t clean = s & kCleanMask;
        if (clean < kCleanMask) clean++;
        uint32_t back = s >> kBackoffShift;
        if (back > 0) back--;
        uint32_t flags = s & (kHeld | kMerged | kMarked | kUnmark);
        if (!present && (flags & kHeld)) {  // dropped (MADV_DONTNEED, swapped out): its hash is stale
          IndexRelease(*table, hashes.data[page]);
          flags &= kMarked | kUnmark;
        }
        state.data[page] = (back << kBackoffShift) | flags | clean;
      }
    }
    if (arg.walk_end <= start || arg.walk_end >= end_address) break;
    start = arg.walk_end;
  }
  if (mode == kModeKsm) {
    // KSM fallback: marked pages that turned hot leave ksmd's sight (MADV_UNMERGEABLE), unless
    // that would split the region's marks into more runs than runAllowance: a hot page in the
    // middle of a run then stays marked (ksmd merges only pages that stay unchanged between its
    // scans, so a hot page costs it a checksum, not a merge), counted as coarsened.
    uint64_t runs = CountRuns(state.data, pages, kMarked);
    for (uint32_t page = 0; page < pages;) {
      if (!(state.data[page] & kUnmark)) {
        page++;
        continue;
      }
      const uint32_t first = page;
      while (page < pages && (state.data[page] & kUnmark)) page++;
      const bool left = first > 0 && (state.data[first - 1] & kMarked);
      const bool right = page < pages && (state.data[page] & kMarked);
      const int delta = left && right ? 1 : (!left && !right ? -1 : 0);
      if (delta > 0 && runs + 1 > allowance) {
        for (uint32_t p = first; p < page; p++) state.data[p] &= ~kUnmark;
        report.data[kRepCoarsened] += page - first;
        continue;
      }
      if (madvise(reinterpret_cast<void*>(address + static_cast<uint64_t>(first) * page_size),
                  static_cast<size_t>(page - first) * page_size, MADV_UNMERGEABLE) < 0) {
        return fail(4, errno);  // the pages keep kUnmark: the next pass tries again
      }
      for (uint32_t p = first; p < page; p++) state.data[p] &= ~(kMarked | kUnmark);
      runs = delta < 0 ? runs - 1 : runs + static_cast<uint64_t>(delta);
      report.data[kRepUnmarked] += page - first;
    }
    report.data[kRepMarkedRuns] = static_cast<double>(runs);
  }
  const uint64_t hash_start = ThreadCpuNs();
  report.data[kRepScanNs] = static_cast<double>(hash_start - cpu_start);

  // 2. Candidates: hashed once (the hash stays valid while the page stays unwritten) and counted
  //    in the index; within the CPU budget.
  const unsigned char* base = reinterpret_cast<const unsigned char*>(address);
  uint32_t since_check = 0;
  bool out_of_budget = false;
  for (uint32_t page = 0; page < pages; page++) {
    uint32_t s = state.data[page] & ~kCandidate;
    state.data[page] = s;
    if (!eligible[page] || (s & kCleanMask) < stable || (s & kMerged) || (s >> kBackoffShift) != 0) continue;
    report.data[kRepCandidates]++;
    if (!(s & kHeld)) {
      if (budget > 0 && ++since_check >= 16) {
        since_check = 0;
        if (static_cast<double>(ThreadCpuNs() - hash_start) > budget) out_of_budget = true;
      }
      if (out_of_budget) {
        report.data[kRepDeferred]++;
        continue;
      }
      uint64_t h = HashPage(base + static_cast<size_t>(page) * page_size, page_size);
      report.data[kRepHashed]++;
      if (!IndexInsert(*table, h)) {
        report.data[kRepIndexFull]++;
        continue;
      }
      hashes.data[page] = h;
      s |= kHeld;
    }
    state.data[page] = s | kCandidate;
  }
  const uint64_t end_ns = ThreadCpuNs();
  report.data[kRepHashNs] = static_cast<double>(end_ns - hash_start);
  report.data[kRepCpuNs] = static_cast<double>(end_ns - cpu_start);
  return Napi::Number::New(env, 0);
}

// What the merge step plans for a page (one byte per page).
constexpr uint8_t kPlanMerge = 1,  // in a run to merge (SKSM) or mark as twins (KSM)
                  kPlanTwin = 2,   // a candidate with another holder of its content
                  kPlanFill = 4;   // KSM: in a gap between runs, marked only to keep runAllowance

// dedupMerge(index, address, pages, state, hashes, config, report) -> 0 | -errno
// Step 3, after every region's scan (so twins between regions of this pass count): a candidate
// whose content has another holder joins a run; runs are merged (SKSM) or marked for ksmd (KSM
// fallback), kMergeChunk pages per madvise call, until the CPU budget is spent (after the first
// chunk, so every pass makes progress); the rest keep their hashes and are merged by later
// passes. Same region and arrays as the dedupScan before it.
//
// KSM fallback: MADV_MERGEABLE splits the VMA at every run's ends, so
// - a run also spans the candidates (cold pages) between two twins: ksmd then scans a few pages
//   without twins instead of the process getting a VMA per twin where twins and unique pages
//   alternate;
// - the marked pages (those marked before and the new runs) must form at most runAllowance runs:
//   when they would not, the smallest gaps between them are marked too (untouched, unique or hot
//   pages: harmless, ksmd merges only identical pages that stay unchanged), reported as coarsened;
// - the marking never holds more runs than max(runs before, runAllowance), even when the budget
//   stops it half-way: runs that join marked pages are marked first, growing them from their
//   marked side; runs of new pages only then, each growing from its first chunk.
Napi::Value DedupMerge(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint64_t cpu_start = ThreadCpuNs();
  MEMDEDUP_TABLE(table, 0);
  MEMDEDUP_ARG(address, ArgU64(info, 1));
  MEMDEDUP_ARG(pages, ArgU64(info, 2, 0xffffffffu));
  MEMDEDUP_ARG(state, ArgTypedArray<uint32_t>(info, 3, pages));
  MEMDEDUP_ARG(hashes, ArgTypedArray<uint64_t>(info, 4, pages));
  MEMDEDUP_ARG(config, ArgTypedArray<double>(info, 5, kConfigLength));
  MEMDEDUP_ARG(report, ArgTypedArray<double>(info, 6, kReportLength));
  const size_t page_size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const int mode = static_cast<int>(config.data[kCfgMode]);
  const double budget = config.data[kCfgBudgetNs] > 0 ? config.data[kCfgBudgetNs] : 0;
  const bool not_our_turn = config.data[kCfgBudgetNs] < 0;  // another process is merging: only count
  const uint64_t allowance = static_cast<uint64_t>(std::min(std::max(config.data[kCfgRunAllowance], 0.0), 4294967295.0));
  uint32_t* st = state.data;
  auto fail = [&](int stage, int error) {
    report.data[kRepFailedStage] = stage;
    const uint64_t merge_ns = ThreadCpuNs() - cpu_start;
    report.data[kRepMergeNs] = static_cast<double>(merge_ns);
    report.data[kRepCpuNs] += static_cast<double>(merge_ns);
    return Napi::Number::New(env, -error);
  };

  // The plan: no change to the state before every allocation is done (see NoAbort).
  std::vector<uint8_t> plan(pages);
  bool cold_since_run = false;  // only candidates since the last run ended
  uint64_t last_end = 0;        // end of the last run (when cold_since_run)
  for (uint32_t page = 0; page < pages; page++) {
    if (!(st[page] & kCandidate)) {
      cold_since_run = false;
      continue;
    }
    if (IndexHolders(*table, hashes.data[page]) < 2) continue;
    plan[page] |= kPlanTwin;
    report.data[kRepDuplicates]++;
    if (mode == kModeKsm && cold_since_run) {
      for (uint64_t p = last_end; p <= page; p++) plan[p] |= kPlanMerge;
    } else {
      plan[page] |= kPlanMerge;
    }
    last_end = page + 1;
    cold_since_run = true;
  }

  uint64_t chunks = 0;
  bool out_of_budget = not_our_turn;
  // Whether the next chunk may start: the first always may (unless it is not our turn).
  auto may_start = [&]() {
    if (!out_of_budget && budget > 0 && chunks > 0 && static_cast<double>(ThreadCpuNs() - cpu_start) > budget) out_of_budget = true;
    return !out_of_budget;
  };

  if (mode == kModeSksm) {
    for (uint32_t page = 0; page < pages && !out_of_budget;) {
      if (!(plan[page] & kPlanMerge)) {
        page++;
        continue;
      }
      uint32_t run_end = page;
      while (run_end < pages && (plan[run_end] & kPlanMerge)) run_end++;
      for (uint32_t first = page; first < run_end; first += kMergeChunk) {
        uint32_t end = std::min(run_end, first + kMergeChunk);
        if (!may_start()) break;
        if (madvise(reinterpret_cast<void*>(address + static_cast<uint64_t>(first) * page_size),
                    static_cast<size_t>(end - first) * page_size, MADV_MERGE) < 0) {
          return fail(2, errno);
        }
        chunks++;
        for (uint32_t p = first; p < end; p++) st[p] |= kMerged;
        report.data[kRepMerged] += end - first;
      }
      page = run_end;
    }
  } else if (mode == kModeKsm) {
    // The target: what is marked now, the new runs, and (over the allowance) the smallest gaps.
    auto in_target = [&](uint64_t p) { return (st[p] & kMarked) || (plan[p] & (kPlanMerge | kPlanFill)); };
    uint64_t target_runs = 0, marked_runs = 0;
    for (uint64_t p = 0; p < pages; p++) {
      target_runs += in_target(p) && (p == 0 || !in_target(p - 1));
      marked_runs += (st[p] & kMarked) && (p == 0 || !(st[p - 1] & kMarked));
    }
    // A region holding marks may always keep one run (its marks, joined).
    const uint64_t most = std::max<uint64_t>(allowance, marked_runs > 0 ? 1 : 0);
    bool blocked = false;  // no run allowed at all: nothing is marked, every twin waits
    if (target_runs > most && most == 0) {
      blocked = true;
    } else if (target_runs > most) {
      struct Gap {
        uint32_t start, length;
      };
      std::vector<Gap> gaps;
      gaps.reserve(target_runs - 1);  // before any change to the state (push_back never reallocates)
      for (uint64_t p = 0, run_end = 0; p < pages; p++) {
        if (!in_target(p)) continue;
        if (run_end > 0 && p > run_end) gaps.push_back({static_cast<uint32_t>(run_end), static_cast<uint32_t>(p - run_end)});
        while (p < pages && in_target(p)) p++;
        run_end = p;
      }
      std::stable_sort(gaps.begin(), gaps.end(), [](const Gap& x, const Gap& y) { return x.length < y.length; });
      for (uint64_t g = 0; g < target_runs - most && g < gaps.size(); g++) {
        for (uint32_t p = gaps[g].start; p < gaps[g].start + gaps[g].length; p++) plan[p] |= kPlanFill;
      }
    }
    // Twins inside what is already marked need no call.
    for (uint32_t p = 0; p < pages; p++) {
      if ((plan[p] & kPlanMerge) && (st[p] & kMarked) && !(st[p] & kMerged)) {
        st[p] |= kMerged;
        report.data[kRepMerged]++;
      }
    }
    // Marks [lo, hi) (not marked yet, inside one target run) in one call, if the budget allows.
    auto mark = [&](uint32_t lo, uint32_t hi) -> int {
      if (!may_start()) return 0;
      if (madvise(reinterpret_cast<void*>(address + static_cast<uint64_t>(lo) * page_size),
                  static_cast<size_t>(hi - lo) * page_size, MADV_MERGEABLE) < 0) {
        return -errno;
      }
      chunks++;
      for (uint32_t p = lo; p < hi; p++) {
        st[p] |= kMarked;
        if (plan[p] & kPlanMerge) {
          st[p] |= kMerged;
          report.data[kRepMerged]++;
        } else {
          report.data[kRepCoarsened]++;
        }
      }
      return 1;
    };
    // Pass 0: target runs that hold marked pages (each call grows a marked piece: the runs never
    // grow in number); pass 1: the others (each adds one run, up to the target's count).
    for (int pass = 0; pass < 2 && !blocked && !out_of_budget; pass++) {
      for (uint32_t ts = 0; ts < pages && !out_of_budget;) {
        if (!in_target(ts)) {
          ts++;
          continue;
        }
        uint32_t te = ts;
        bool holds_marks = false;
        while (te < pages && in_target(te)) holds_marks |= (st[te++] & kMarked) != 0;
        if (holds_marks != (pass == 0)) {
          ts = te;
          continue;
        }
        for (uint32_t q = ts; q < te && !out_of_budget;) {
          if (st[q] & kMarked) {
            q++;
            continue;
          }
          const uint32_t a = q;
          while (q < te && !(st[q] & kMarked)) q++;
          const uint32_t b = q;
          int rc = 1;
          if (a == ts && b < te) {  // before the first marked piece: grow it leftwards
            for (uint32_t hi = b; hi > a && rc > 0; hi -= std::min(kMergeChunk, hi - a)) rc = mark(hi - std::min(kMergeChunk, hi - a), hi);
          } else {  // grow the piece on the left rightwards (or start a new run)
            for (uint32_t lo = a; lo < b && rc > 0; lo += std::min(kMergeChunk, b - lo)) rc = mark(lo, lo + std::min(kMergeChunk, b - lo));
          }
          if (rc < 0) return fail(3, -rc);
        }
        ts = te;
      }
    }
  }
  uint64_t merged_total = 0;
  for (uint32_t page = 0; page < pages; page++) {
    st[page] &= ~kCandidate;
    merged_total += (st[page] & kMerged) != 0;
    if ((plan[page] & kPlanTwin) && !(st[page] & kMerged) && mode != kModeNone) report.data[kRepMergeDeferred]++;
  }
  report.data[kRepMergedTotal] = static_cast<double>(merged_total);
  if (mode == kModeKsm) report.data[kRepMarkedRuns] = static_cast<double>(CountRuns(st, pages, kMarked));
  const uint64_t merge_ns = ThreadCpuNs() - cpu_start;
  report.data[kRepMergeNs] = static_cast<double>(merge_ns);
  report.data[kRepCpuNs] += static_cast<double>(merge_ns);
  return Napi::Number::New(env, 0);
}

// dedupRelease(index, pages, state: Uint32Array, hashes: BigUint64Array) -> 0 | -EBADF: gives
// back every hash the region holds in the index (untrack, close); clears the state.
Napi::Value DedupRelease(const Napi::CallbackInfo& info) {
  MEMDEDUP_TABLE(table, 0);
  MEMDEDUP_ARG(pages, ArgU64(info, 1, 0xffffffffu));
  MEMDEDUP_ARG(state, ArgTypedArray<uint32_t>(info, 2, pages));
  MEMDEDUP_ARG(hashes, ArgTypedArray<uint64_t>(info, 3, pages));
  for (size_t page = 0; page < pages; page++) {
    if (state.data[page] & kHeld) IndexRelease(*table, hashes.data[page]);
    state.data[page] = 0;
  }
  return Napi::Number::New(info.Env(), 0);
}

// threadCpuNs() -> CLOCK_THREAD_CPUTIME_ID of the calling thread, in ns.
Napi::Value ThreadCpuTime(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(ThreadCpuNs()));
}

// The N-API boundary of every function above: a std::bad_alloc (a std::vector or a string that
// could not get memory) is thrown to JS as an Error with Node's code ERR_MEMORY_ALLOCATION_FAILED,
// never std::terminate's abort. No syscall returned it, so it is not a SyscallError ENOMEM. The
// functions allocate before they change anything, so nothing is left half-done.
template <Napi::Value (*Fn)(const Napi::CallbackInfo&)>
Napi::Value NoAbort(const Napi::CallbackInfo& info) {
  try {
    return Fn(info);
  } catch (const std::bad_alloc&) {
    // A fixed message: building one could fail the same way.
    const char* fn = info.Data() != nullptr ? static_cast<const char*>(info.Data()) : "native";
    char message[96];
    snprintf(message, sizeof message, "%s: out of memory (a native allocation failed)", fn);
    napi_throw_error(info.Env(), "ERR_MEMORY_ALLOCATION_FAILED", message);
    return info.Env().Undefined();
  }
}

}  // namespace

void InitContent(Napi::Env env, Napi::Object exports) {
  Export(exports, "hashPages", NoAbort<HashPages>);
  Export(exports, "twinIndexCreate", NoAbort<TwinIndexCreate>);
  Export(exports, "twinIndexOpen", NoAbort<TwinIndexOpen>);
  Export(exports, "twinIndexClose", NoAbort<TwinIndexClose>);
  Export(exports, "twinIndexInfo", NoAbort<TwinIndexInfo>);
  Export(exports, "twinIndexUpdate", NoAbort<TwinIndexUpdate>);
  Export(exports, "twinIndexTakeTurn", NoAbort<TwinIndexTakeTurn>);
  Export(exports, "twinIndexGiveTurn", NoAbort<TwinIndexGiveTurn>);
  Export(exports, "dedupScan", NoAbort<DedupScan>);
  Export(exports, "dedupMerge", NoAbort<DedupMerge>);
  Export(exports, "dedupRelease", NoAbort<DedupRelease>);
  Export(exports, "threadCpuNs", NoAbort<ThreadCpuTime>);
  Napi::Object c = Napi::Object::New(env);
  SetConst(c, "CONFIG_LENGTH", kConfigLength);
  SetConst(c, "REPORT_LENGTH", kReportLength);
  SetConst(c, "MODE_NONE", kModeNone);
  SetConst(c, "MODE_SKSM", kModeSksm);
  SetConst(c, "MODE_KSM", kModeKsm);
  exports.Set("contentConstants", c);
}

}  // namespace memdedup
