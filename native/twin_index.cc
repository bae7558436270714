// TwinIndex and hashPages (lib/twin_index.ts): the cross-process twin index in a sealed shared
// memfd (its table and updates are in twin_index.h), its merge turn, and page hashes of a Region.
// Reads memory of live Regions whose pages lib/ has checked are readable, through the mapping only
// where it cannot vanish under the reader (private anonymous pages of the base size: hugetlb, file
// and shared memory is copied through the kernel, EFAULT instead of SIGBUS); writes only into
// typed arrays it re-checked and into the index mapping it created itself.
#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <new>
#include <vector>

#include "addon.h"
#include "compat.h"
#include "twin_index.h"

namespace memdedup {
namespace {

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

const napi_type_tag kTwinTableTag = {0x6d656d6465647570ULL, 0x7477696e696e6478ULL};

void CloseTable(TwinTable* t) {
  if (t->base != nullptr) munmap(t->base, t->bytes);
  if (t->fd >= 0) close(t->fd);
  t->base = nullptr;
  t->words = nullptr;
  t->fd = -1;
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

}  // namespace

std::optional<TwinTable*> ArgTable(const Napi::CallbackInfo& info, size_t i, bool closed_ok) {
  bool tagged = false;
  if (info[i].Type() != napi_external || napi_check_object_type_tag(info.Env(), info[i], &kTwinTableTag, &tagged) != napi_ok || !tagged) {
    ThrowArgument(info, i, false, "a twin index handle");
    return std::nullopt;
  }
  TwinTable* t = info[i].As<Napi::External<TwinTable>>().Data();
  if (t->words == nullptr && !closed_ok) {
    ThrowArgument(info, i, false, "an open twin index handle (TwinIndex.closed is checked first)");
    return std::nullopt;
  }
  return t;
}

namespace {

// Which call failed when twinIndexCreate returned -errno (out[0]): lib/ names it in the error.
enum CreateStage : uint32_t { kCreateMemfd = 1, kCreateFtruncate, kCreateSeals, kCreateMmap };

// twinIndexCreate(slots, failedStage: Uint32Array(1)) -> handle | -errno (failedStage[0]: the
// CreateStage). slots: a power of two lib/ checked (re-checked here). The slots are left as the
// memfd gives them, zero (free): only the header is written.
Napi::Value TwinIndexCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MEMDEDUP_ARG(slots, ArgU64(info, 0, static_cast<double>(kMaxSlots)));
  MEMDEDUP_ARG(stage, ArgTypedArray<uint32_t>(info, 1, 1));
  if (slots < kProbe || (slots & (slots - 1)) != 0) {
    ThrowArgument(info, 0, true, "a power of two >= 32");
    return env.Undefined();
  }
  auto* t = new TwinTable();  // first: a std::bad_alloc (NoAbort) leaves nothing behind
  t->slots = slots;
  t->bytes = kIndexHeader + slots * sizeof(uint64_t);
  auto fail = [&](CreateStage failed) {
    int error = errno;
    CloseTable(t);
    delete t;
    stage.data[0] = failed;
    return Napi::Number::New(env, -error);
  };
  t->fd = memfd_create("memdedup-twin-index", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (t->fd < 0) return fail(kCreateMemfd);
  if (ftruncate(t->fd, static_cast<off_t>(t->bytes)) < 0) return fail(kCreateFtruncate);
  if (fcntl(t->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) return fail(kCreateSeals);
  void* base = mmap(nullptr, t->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, t->fd, 0);
  if (base == MAP_FAILED) return fail(kCreateMmap);
  t->base = base;
  t->words = reinterpret_cast<uint64_t*>(static_cast<char*>(base) + kIndexHeader);
  uint64_t* header = static_cast<uint64_t*>(base);
  header[1] = slots;
  __atomic_store_n(&header[0], kIndexMagic, __ATOMIC_RELEASE);
  return NewTableHandle(env, t, true);
}

// twinIndexOpen(fd) -> handle | -errno | why the file is refused (a string, the end of lib/'s
// "The argument 'pathOrFd' ..." message: not a sealed memfd, or not a twin index by size or
// header). Takes ownership of fd only on success.
Napi::Value TwinIndexOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  int seals = fcntl(fd, F_GET_SEALS);
  const char* not_sealed = "is not a memfd sealed against shrinking and growing";
  const char* not_index = "is not a memdedup twin index (size or header)";
  if (seals < 0 && errno != EINVAL) return Napi::Number::New(env, -errno);
  if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW)) {
    return Napi::String::New(env, not_sealed);  // EINVAL: not a memfd at all
  }
  struct stat st;
  if (fstat(fd, &st) < 0) return Napi::Number::New(env, -errno);
  size_t bytes = static_cast<size_t>(st.st_size);
  if (bytes < kIndexHeader + kProbe * sizeof(uint64_t)) return Napi::String::New(env, not_index);
  // Allocated before the mapping: a std::bad_alloc (NoAbort) leaves nothing behind.
  std::unique_ptr<TwinTable> table(new TwinTable());
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return Napi::Number::New(env, -errno);
  uint64_t* header = static_cast<uint64_t*>(base);
  uint64_t slots = header[1];
  if (__atomic_load_n(&header[0], __ATOMIC_ACQUIRE) != kIndexMagic || slots < kProbe || (slots & (slots - 1)) != 0 ||
      slots > kMaxSlots || kIndexHeader + slots * sizeof(uint64_t) != bytes) {
    munmap(base, bytes);
    return Napi::String::New(env, not_index);
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
  MEMDEDUP_ARG(t, ArgTable(info, 0, true));
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

// twinIndexInfo(handle, out: Float64Array(2 or more)) -> 0 | -errno (lseek); out = [fd, slots],
// and when out has a third element, out[2] = used slots (CountUsedSlots: it reads the index).
Napi::Value TwinIndexInfo(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(t, ArgTable(info, 0));
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
// -> the hashes updated: count, or fewer when an insert found its probe window full (holders are
// filled up to there; that hash and those after it are not counted).
// delta 1 counts one more holder of each hash, -1 one fewer, 0 only looks; holders[i] = the
// holders of hashes[i] right after its own update.
Napi::Value TwinIndexUpdate(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(t, ArgTable(info, 0));
  MEMDEDUP_ARG(count, ArgU64(info, 2));
  MEMDEDUP_ARG(hashes, ArgTypedArray<uint64_t>(info, 1, count));
  MEMDEDUP_ARG(delta, ArgInt(info, 3, -1, 1));
  MEMDEDUP_ARG(holders, ArgTypedArray<uint32_t>(info, 4, count));
  for (size_t i = 0; i < count; i++) {
    if (delta > 0 && !IndexInsert(*t, hashes.data[i])) return Napi::Number::New(info.Env(), static_cast<double>(i));
    if (delta < 0) IndexRelease(*t, hashes.data[i]);
    holders.data[i] = IndexHolders(*t, hashes.data[i]);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(count));
}

// twinIndexTakeTurn(handle, leaseMs) -> the turn's word as a BigInt (0n: another thread has it).
// twinIndexGiveTurn(handle, word: BigInt) -> 0.
Napi::Value TwinIndexTakeTurn(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(t, ArgTable(info, 0));
  MEMDEDUP_ARG(lease_ms, ArgU64(info, 1, 3600000.0));
  return Napi::BigInt::New(info.Env(), TurnTake(*t, lease_ms));
}
Napi::Value TwinIndexGiveTurn(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(t, ArgTable(info, 0));
  bool lossless = false;
  if (!info[1].IsBigInt()) {
    ThrowArgument(info, 1, false, "a BigInt");
    return info.Env().Undefined();
  }
  uint64_t taken = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
  if (taken != 0 && lossless) TurnGive(*t, taken);
  return Napi::Number::New(info.Env(), 0);
}

}  // namespace

void InitTwinIndex(Napi::Env env, Napi::Object exports) {
  Export<HashPages>(exports, "hashPages");
  Export<TwinIndexCreate>(exports, "twinIndexCreate");
  ExportTable(exports, "twinIndexCreateStage",
              {{"memfdCreate", kCreateMemfd}, {"ftruncate", kCreateFtruncate}, {"addSeals", kCreateSeals}, {"mmap", kCreateMmap}});
  Export<TwinIndexOpen>(exports, "twinIndexOpen");
  Export<TwinIndexClose>(exports, "twinIndexClose");
  Export<TwinIndexInfo>(exports, "twinIndexInfo");
  Export<TwinIndexUpdate>(exports, "twinIndexUpdate");
  Export<TwinIndexTakeTurn>(exports, "twinIndexTakeTurn");
  Export<TwinIndexGiveTurn>(exports, "twinIndexGiveTurn");
}

}  // namespace memdedup
