// The Deduplicator's pass engine (lib/deduplicator.ts): per region, one PAGEMAP_SCAN walk for the
// writes since the last pass, candidate selection and hashing into the twin index (twin_index.h),
// then, after every region's scan, the twin lookup and the merge runs (MADV_MERGE, or
// MADV_MERGEABLE for ksmd). Reads through the mapping only pages PAGEMAP_SCAN reported present,
// private and anonymous (they cannot vanish under the reader); writes only into typed arrays it
// re-checked. Every allocation is made before the first change to the state or the index.
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "addon.h"
#include "compat.h"
#include "pagemap.h"
#include "twin_index.h"

namespace memdedup {
namespace {

// Per-page state word (a Uint32Array owned by lib/): bits 0-7 passes unwritten (saturating),
// kHeld the page's hash is counted in the index (hashes[page] holds it), kMerged merged by
// MADV_MERGE or marked MADV_MERGEABLE by us as a twin (or a cold page between twins), kCandidate
// chosen by this pass's scan for the merge step, kMarked (KSM) inside a range we marked
// MADV_MERGEABLE (kMerged pages, and pages marked only to keep the VMA budget: see DedupMerge),
// kUnmark (KSM) marked, written since its merge: to be given back with MADV_UNMERGEABLE,
// bits 16-31 back-off passes left. lib/deduplicator.ts reads kMarked (dedupStateBit.marked: close(), untrack()).
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
  kRepMerged,       // SKSM: pages merged by MADV_MERGE this pass
  kRepCow,          // merged (or marked) pages written since: they back off
  kRepMergedTotal,  // SKSM: pages merged by us now
  kRepUnmarked,     // KSM mode: written marked pages given back with MADV_UNMERGEABLE
  kRepDeferred,     // candidates left unhashed because the CPU budget ran out
  kRepIndexFull,    // candidates the index had no slot for
  kRepWpLost,  // reported written but still shared (a kernel whose KSM merge drops uffd-wp)
  kRepCpuNs,        // thread CPU time of both calls
  kRepFailedStage,  // on -errno: the FailedStage
  kRepScanNs,       // thread CPU time of step 1 (the PAGEMAP_SCAN walk and the state update)
  kRepHashNs,       // of step 2 (candidates, hashing, index inserts)
  kRepMergeNs,      // of step 3 (twin lookups and the madvise calls)
  kRepMergeDeferred,  // duplicates left for a later pass: the budget ran out, or not our merge turn
  kRepCoarsened,    // KSM: pages marked (or left marked) only to keep the runs within runAllowance
  kRepMarkedRuns,   // KSM: runs of kMarked pages in the region after the call
  kRepMarked,       // KSM: pages of twin runs (twins, cold candidates between them) marked MADV_MERGEABLE
                    // this pass; whether ksmd merged them is not known here
  kRepMarkedTotal,  // KSM: pages of twin runs marked by us now
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

// The arguments dedupScan and dedupMerge share, from argument `first` on: index, address, pages,
// state: Uint32Array, hashes: BigUint64Array (each of >= pages elements), config, report.
struct PassArgs {
  TwinTable* table;
  uint64_t address, pages;
  ArrayArg<uint32_t> state;
  ArrayArg<uint64_t> hashes;
  ArrayArg<double> config, report;
};
std::optional<PassArgs> ArgPass(const Napi::CallbackInfo& info, size_t first) {
  auto table = ArgTable(info, first);
  if (!table) return std::nullopt;
  auto address = ArgU64(info, first + 1);
  if (!address) return std::nullopt;
  auto pages = ArgU64(info, first + 2, 0xffffffffu);
  if (!pages) return std::nullopt;
  auto state = ArgTypedArray<uint32_t>(info, first + 3, *pages);
  if (!state) return std::nullopt;
  auto hashes = ArgTypedArray<uint64_t>(info, first + 4, *pages);
  if (!hashes) return std::nullopt;
  auto config = ArgTypedArray<double>(info, first + 5, kConfigLength);
  if (!config) return std::nullopt;
  auto report = ArgTypedArray<double>(info, first + 6, kReportLength);
  if (!report) return std::nullopt;
  return PassArgs{*table, *address, *pages, *state, *hashes, *config, *report};
}

// Where a pass failed (report[kRepFailedStage], with the -errno result): the call that failed.
enum FailedStage {
  kStageNone,
  kStagePagemapScan,         // ioctl(PAGEMAP_SCAN)
  kStageMadviseMerge,        // madvise(MADV_MERGE)
  kStageMadviseMergeable,    // madvise(MADV_MERGEABLE)
  kStageMadviseUnmergeable,  // madvise(MADV_UNMERGEABLE)
  kStagePagemapRead,         // pread(/proc/self/pagemap)
};

// One region's scan: its arrays (re-checked by DedupScan) and the pass's settings, read once from
// config and clamped. Each step below returns kStageNone or the stage that failed, errno set.
struct RegionScan {
  const TwinTable& table;
  int pagemap_fd;
  uint64_t address;
  uint32_t pages;
  size_t page_size;
  uint32_t* state;
  uint64_t* hashes;
  double* report;
  uint8_t* eligible;  // per page: present, not the zero page, not file-backed (step 1 fills it)
  int mode;
  uint32_t stable, backoff_passes;
  double budget;       // ns of CPU for hashing (0: none)
  uint64_t allowance;  // KSM: the most marked runs the region may hold

  uint64_t end_address() const { return address + static_cast<uint64_t>(pages) * page_size; }
};

// Pagemap entries read at once when a merged page is reported written (no allocation: a stack array).
constexpr uint32_t kEntryBlock = 512;
struct EntryBlock {
  uint64_t entries[kEntryBlock];
  uint32_t first = 0, count = 0;  // entries[i] is page first + i
};

// Whether a merged page PAGEMAP_SCAN reported written is in fact still shared with another
// mapping (present, not exclusive), so not written by us: a write would have COWed it. A kernel
// without kernel-patches/0001 drops uffd-wp when ksmd maps the KSM page. Reads the entries of up to
// kEntryBlock pages from `page` (before `last`) at once into `block`.
FailedStage StillShared(const RegionScan& r, EntryBlock& block, uint32_t page, uint32_t last, bool* shared) {
  if (page < block.first || page >= block.first + block.count) {
    uint32_t want = std::min<uint32_t>(kEntryBlock, last - page);
    ssize_t got = pread(r.pagemap_fd, block.entries, want * sizeof(uint64_t),
                        static_cast<off_t>((r.address / r.page_size + page) * sizeof(uint64_t)));
    if (got < 0) return kStagePagemapRead;
    block.first = page;
    block.count = static_cast<uint32_t>(static_cast<size_t>(got) / sizeof(uint64_t));
  }
  const size_t k = page - block.first;
  *shared = k < block.count && ((block.entries[k] >> pagemap_entry::kPresentBit) & 1) &&
            !((block.entries[k] >> pagemap_entry::kExclusiveBit) & 1);
  return kStageNone;
}

// A written page: its hash leaves the index, it starts over as unwritten for 0 passes; a merged
// one backs off (KSM: and, when marked, is to be unmarked: kUnmark).
void RecordWrite(const RegionScan& r, uint32_t page) {
  const uint32_t s = r.state[page];
  r.report[kRepWritten]++;
  if (s & kHeld) IndexRelease(r.table, r.hashes[page]);
  uint32_t back = s >> kBackoffShift;
  uint32_t keep = s & (kMarked | kUnmark);  // the VMA stays marked until UnmarkHot
  if (s & kMerged) {
    r.report[kRepCow]++;
    back = r.backoff_passes;
    if (r.mode == kModeKsm && (s & kMarked)) keep |= kUnmark;
  }
  r.state[page] = (back << kBackoffShift) | keep;
}

// An unwritten page: one more clean pass, one back-off pass fewer; a page no longer present
// (MADV_DONTNEED, swapped out) gives its now stale hash back.
void RecordClean(const RegionScan& r, uint32_t page, bool present) {
  const uint32_t s = r.state[page];
  uint32_t clean = s & kCleanMask;
  if (clean < kCleanMask) clean++;
  uint32_t back = s >> kBackoffShift;
  if (back > 0) back--;
  uint32_t flags = s & (kHeld | kMerged | kMarked | kUnmark);
  if (!present && (flags & kHeld)) {
    IndexRelease(r.table, r.hashes[page]);
    flags &= kMarked | kUnmark;
  }
  r.state[page] = (back << kBackoffShift) | flags | clean;
}

// Step 1: writes since the last pass, and what is present: one PAGEMAP_SCAN walk (several calls
// only when the vector fills). No category filter: every page is reported with its categories, and
// PM_SCAN_WP_MATCHING re-protects the written ones in the same walk.
FailedStage CollectWrites(const RegionScan& r, std::vector<page_region>& vec) {
  EntryBlock block;
  const uint64_t end_address = r.end_address();
  for (uint64_t start = r.address; start < end_address;) {
    struct pm_scan_arg arg = {};
    arg.size = sizeof(arg);
    arg.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC;
    arg.start = start;
    arg.end = end_address;
    arg.vec = reinterpret_cast<uintptr_t>(vec.data());
    arg.vec_len = vec.size();
    arg.return_mask = PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_PFNZERO | PAGE_IS_FILE;
    long n = ioctl(r.pagemap_fd, PAGEMAP_SCAN, &arg);
    if (n < 0) return kStagePagemapScan;
    for (long i = 0; i < n && static_cast<size_t>(i) < vec.size(); i++) {
      const page_region& region = vec[i];
      if (region.start < r.address || region.end > end_address || region.start >= region.end) continue;
      const uint32_t first = static_cast<uint32_t>((region.start - r.address) / r.page_size);
      const uint32_t last = static_cast<uint32_t>((region.end - r.address) / r.page_size);
      const bool written = region.categories & PAGE_IS_WRITTEN;
      const bool present = (region.categories & PAGE_IS_PRESENT) && !(region.categories & (PAGE_IS_PFNZERO | PAGE_IS_FILE));
      for (uint32_t page = first; page < last; page++) {
        r.eligible[page] = present;
        bool page_written = written;
        if (page_written && present && (r.state[page] & kMerged)) {
          bool shared = false;
          if (FailedStage failed = StillShared(r, block, page, last, &shared)) return failed;
          if (shared) {
            r.report[kRepWpLost]++;
            page_written = false;
          }
        }
        if (page_written) RecordWrite(r, page);
        else RecordClean(r, page, present);
      }
    }
    if (arg.walk_end <= start || arg.walk_end >= end_address) break;
    start = arg.walk_end;
  }
  return kStageNone;
}

// Step 1, KSM fallback: marked pages that turned hot (kUnmark) leave ksmd's sight
// (MADV_UNMERGEABLE), unless that would split the region's marks into more runs than
// runAllowance: a hot page in the middle of a run then stays marked (ksmd merges only pages that
// stay unchanged between its scans, so a hot page costs it a checksum, not a merge), counted as
// coarsened. report[kRepMarkedRuns]: the runs after it.
FailedStage UnmarkHot(const RegionScan& r) {
  uint32_t* st = r.state;
  uint64_t runs = CountRuns(st, r.pages, kMarked);
  for (uint32_t page = 0; page < r.pages;) {
    if (!(st[page] & kUnmark)) {
      page++;
      continue;
    }
    const uint32_t first = page;
    while (page < r.pages && (st[page] & kUnmark)) page++;
    const bool left = first > 0 && (st[first - 1] & kMarked);
    const bool right = page < r.pages && (st[page] & kMarked);
    const int delta = left && right ? 1 : (!left && !right ? -1 : 0);
    if (delta > 0 && runs + 1 > r.allowance) {
      for (uint32_t p = first; p < page; p++) st[p] &= ~kUnmark;
      r.report[kRepCoarsened] += page - first;
      continue;
    }
    if (madvise(reinterpret_cast<void*>(r.address + static_cast<uint64_t>(first) * r.page_size),
                static_cast<size_t>(page - first) * r.page_size, MADV_UNMERGEABLE) < 0) {
      r.report[kRepMarkedRuns] = static_cast<double>(runs);
      return kStageMadviseUnmergeable;  // the pages keep kUnmark: the next pass tries again
    }
    for (uint32_t p = first; p < page; p++) st[p] &= ~(kMarked | kUnmark);
    runs = delta < 0 ? runs - 1 : runs + static_cast<uint64_t>(delta);
    r.report[kRepUnmarked] += page - first;
  }
  r.report[kRepMarkedRuns] = static_cast<double>(runs);
  return kStageNone;
}

// Step 2: the candidates (eligible, unwritten for stablePasses, not merged, not backing off),
// marked kCandidate; each hashed once (the hash stays valid while the page stays unwritten) and
// counted in the index, until the CPU budget (from hash_start) runs out: the rest are deferred.
void HashCandidates(const RegionScan& r, uint64_t hash_start) {
  const unsigned char* base = reinterpret_cast<const unsigned char*>(r.address);
  uint32_t since_check = 0;
  bool out_of_budget = false;
  for (uint32_t page = 0; page < r.pages; page++) {
    uint32_t s = r.state[page] & ~kCandidate;
    r.state[page] = s;
    if (!r.eligible[page] || (s & kCleanMask) < r.stable || (s & kMerged) || (s >> kBackoffShift) != 0) continue;
    r.report[kRepCandidates]++;
    if (!(s & kHeld)) {
      if (r.budget > 0 && ++since_check >= 16) {
        since_check = 0;
        if (static_cast<double>(ThreadCpuNs() - hash_start) > r.budget) out_of_budget = true;
      }
      if (out_of_budget) {
        r.report[kRepDeferred]++;
        continue;
      }
      const uint64_t h = HashPage(base + static_cast<size_t>(page) * r.page_size, r.page_size);
      r.report[kRepHashed]++;
      if (!IndexInsert(r.table, h)) {
        r.report[kRepIndexFull]++;
        continue;
      }
      r.hashes[page] = h;
      s |= kHeld;
    }
    r.state[page] = s | kCandidate;
  }
}

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
  const uint64_t cpu_start = ThreadCpuNs();
  MEMDEDUP_ARG(pagemap_fd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(args, ArgPass(info, 1));
  auto [table, address, pages, state, hashes, config, report] = args;

  // Allocated before any change (a std::bad_alloc here leaves everything as it was: NoAbort).
  std::vector<uint8_t> eligible(pages);
  static thread_local std::vector<page_region> vec;
  if (vec.size() < 1024) vec.resize(1024);

  for (size_t i = 0; i < kReportLength; i++) report.data[i] = 0;
  const double* cfg = config.data;
  const RegionScan r{
      *table, pagemap_fd, address, static_cast<uint32_t>(pages), static_cast<size_t>(sysconf(_SC_PAGESIZE)),
      state.data, hashes.data, report.data, eligible.data(), static_cast<int>(cfg[kCfgMode]),
      static_cast<uint32_t>(std::min(std::max(cfg[kCfgStable], 1.0), 255.0)),
      static_cast<uint32_t>(std::min(std::max(cfg[kCfgBackoff], 0.0), 65535.0)),
      cfg[kCfgBudgetNs] > 0 ? cfg[kCfgBudgetNs] : 0,
      static_cast<uint64_t>(std::min(std::max(cfg[kCfgRunAllowance], 0.0), 4294967295.0))};

  FailedStage failed = CollectWrites(r, vec);
  if (failed == kStageNone && r.mode == kModeKsm) failed = UnmarkHot(r);
  if (failed != kStageNone) {
    const int error = errno;
    report.data[kRepFailedStage] = failed;
    report.data[kRepCpuNs] = static_cast<double>(ThreadCpuNs() - cpu_start);
    return Napi::Number::New(env, -error);
  }
  const uint64_t hash_start = ThreadCpuNs();
  report.data[kRepScanNs] = static_cast<double>(hash_start - cpu_start);
  HashCandidates(r, hash_start);
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
// One region's merge step: the arrays (re-checked by DedupMerge), the pass's settings read once
// from config, the plan, and the CPU budget spent so far. The steps below return kStageNone or
// the stage that failed, errno set.
struct RegionMerge {
  const TwinTable& table;
  uint64_t address;
  uint32_t pages;
  size_t page_size;
  uint32_t* state;
  const uint64_t* hashes;
  double* report;
  uint8_t* plan;  // kPlan* per page
  int mode;
  double budget;       // ns of CPU (0: none)
  uint64_t allowance;  // KSM: the most marked runs the region may hold
  uint64_t cpu_start;
  uint64_t chunks = 0;
  bool out_of_budget;  // set at the start when another process has the merge turn: only count

  // Whether the next chunk may start: the first always may (unless it is not our turn).
  bool MayStart() {
    if (!out_of_budget && budget > 0 && chunks > 0 && static_cast<double>(ThreadCpuNs() - cpu_start) > budget) out_of_budget = true;
    return !out_of_budget;
  }
  void* At(uint64_t page) const { return reinterpret_cast<void*>(address + page * page_size); }
};

// The plan: twins (candidates with another holder of their content), and the runs to merge or
// mark. KSM: a run spans the cold candidates between two twins.
void PlanTwins(RegionMerge& m) {
  bool cold_since_run = false;  // only candidates since the last run ended
  uint64_t last_end = 0;        // end of the last run (when cold_since_run)
  for (uint32_t page = 0; page < m.pages; page++) {
    if (!(m.state[page] & kCandidate)) {
      cold_since_run = false;
      continue;
    }
    if (IndexHolders(m.table, m.hashes[page]) < 2) continue;
    m.plan[page] |= kPlanTwin;
    m.report[kRepDuplicates]++;
    if (m.mode == kModeKsm && cold_since_run) {
      for (uint64_t p = last_end; p <= page; p++) m.plan[p] |= kPlanMerge;
    } else {
      m.plan[page] |= kPlanMerge;
    }
    last_end = page + 1;
    cold_since_run = true;
  }
}

// SKSM: MADV_MERGE over each planned run, kMergeChunk pages a call, while the budget lasts.
FailedStage MergeRuns(RegionMerge& m) {
  for (uint32_t page = 0; page < m.pages && !m.out_of_budget;) {
    if (!(m.plan[page] & kPlanMerge)) {
      page++;
      continue;
    }
    uint32_t run_end = page;
    while (run_end < m.pages && (m.plan[run_end] & kPlanMerge)) run_end++;
    for (uint32_t first = page; first < run_end; first += kMergeChunk) {
      uint32_t end = std::min(run_end, first + kMergeChunk);
      if (!m.MayStart()) break;
      if (madvise(m.At(first), static_cast<size_t>(end - first) * m.page_size, MADV_MERGE) < 0) return kStageMadviseMerge;
      m.chunks++;
      for (uint32_t p = first; p < end; p++) m.state[p] |= kMerged;
      m.report[kRepMerged] += end - first;
    }
    page = run_end;
  }
  return kStageNone;
}

// KSM: the target is what is marked now plus the planned runs; over the allowance, the smallest
// gaps between them join it (kPlanFill). Returns false when no run is allowed at all (nothing is
// marked: every twin waits). The vector is reserved before any change to the state (NoAbort).
bool PlanFills(RegionMerge& m) {
  auto in_target = [&](uint64_t p) { return (m.state[p] & kMarked) || (m.plan[p] & (kPlanMerge | kPlanFill)); };
  uint64_t target_runs = 0, marked_runs = 0;
  for (uint64_t p = 0; p < m.pages; p++) {
    target_runs += in_target(p) && (p == 0 || !in_target(p - 1));
    marked_runs += (m.state[p] & kMarked) && (p == 0 || !(m.state[p - 1] & kMarked));
  }
  // A region holding marks may always keep one run (its marks, joined).
  const uint64_t most = std::max<uint64_t>(m.allowance, marked_runs > 0 ? 1 : 0);
  if (target_runs <= most) return true;
  if (most == 0) return false;
  struct Gap {
    uint32_t start, length;
  };
  std::vector<Gap> gaps;
  gaps.reserve(target_runs - 1);  // push_back never reallocates
  for (uint64_t p = 0, run_end = 0; p < m.pages; p++) {
    if (!in_target(p)) continue;
    if (run_end > 0 && p > run_end) gaps.push_back({static_cast<uint32_t>(run_end), static_cast<uint32_t>(p - run_end)});
    while (p < m.pages && in_target(p)) p++;
    run_end = p;
  }
  std::stable_sort(gaps.begin(), gaps.end(), [](const Gap& x, const Gap& y) { return x.length < y.length; });
  for (uint64_t g = 0; g < target_runs - most && g < gaps.size(); g++) {
    for (uint32_t p = gaps[g].start; p < gaps[g].start + gaps[g].length; p++) m.plan[p] |= kPlanFill;
  }
  return true;
}

// KSM: MADV_MERGEABLE over the target, so that the marked runs never outnumber
// max(runs before, runAllowance), even when the budget stops it half-way. Pass 0: target runs
// that hold marked pages (each call grows a marked piece: the runs never grow in number); pass 1:
// the others (each adds one run, up to the target's count).
FailedStage MarkRuns(RegionMerge& m) {
  auto in_target = [&](uint64_t p) { return (m.state[p] & kMarked) || (m.plan[p] & (kPlanMerge | kPlanFill)); };
  // Twins inside what is already marked need no call.
  for (uint32_t p = 0; p < m.pages; p++) {
    if ((m.plan[p] & kPlanMerge) && (m.state[p] & kMarked) && !(m.state[p] & kMerged)) {
      m.state[p] |= kMerged;
      m.report[kRepMarked]++;
    }
  }
  // Marks [lo, hi) (not marked yet, inside one target run) in one call, if the budget allows:
  // 1 marked, 0 out of budget, -1 failed (errno set).
  auto mark = [&](uint32_t lo, uint32_t hi) -> int {
    if (!m.MayStart()) return 0;
    if (madvise(m.At(lo), static_cast<size_t>(hi - lo) * m.page_size, MADV_MERGEABLE) < 0) return -1;
    m.chunks++;
    for (uint32_t p = lo; p < hi; p++) {
      m.state[p] |= kMarked;
      if (m.plan[p] & kPlanMerge) {
        m.state[p] |= kMerged;
        m.report[kRepMarked]++;
      } else {
        m.report[kRepCoarsened]++;
      }
    }
    return 1;
  };
  for (int pass = 0; pass < 2 && !m.out_of_budget; pass++) {
    for (uint32_t ts = 0; ts < m.pages && !m.out_of_budget;) {
      if (!in_target(ts)) {
        ts++;
        continue;
      }
      uint32_t te = ts;
      bool holds_marks = false;
      while (te < m.pages && in_target(te)) holds_marks |= (m.state[te++] & kMarked) != 0;
      if (holds_marks != (pass == 0)) {
        ts = te;
        continue;
      }
      for (uint32_t q = ts; q < te && !m.out_of_budget;) {
        if (m.state[q] & kMarked) {
          q++;
          continue;
        }
        const uint32_t a = q;
        while (q < te && !(m.state[q] & kMarked)) q++;
        const uint32_t b = q;
        int rc = 1;
        if (a == ts && b < te) {  // before the first marked piece: grow it leftwards
          for (uint32_t hi = b; hi > a && rc > 0; hi -= std::min(kMergeChunk, hi - a)) rc = mark(hi - std::min(kMergeChunk, hi - a), hi);
        } else {  // grow the piece on the left rightwards (or start a new run)
          for (uint32_t lo = a; lo < b && rc > 0; lo += std::min(kMergeChunk, b - lo)) rc = mark(lo, lo + std::min(kMergeChunk, b - lo));
        }
        if (rc < 0) return kStageMadviseMergeable;
      }
      ts = te;
    }
  }
  return kStageNone;
}

// The candidates are done with: totals, and the twins the budget (or the turn) left for later.
void FinishMerge(RegionMerge& m) {
  uint64_t merged_total = 0;
  for (uint32_t page = 0; page < m.pages; page++) {
    m.state[page] &= ~kCandidate;
    merged_total += (m.state[page] & kMerged) != 0;
    if ((m.plan[page] & kPlanTwin) && !(m.state[page] & kMerged) && m.mode != kModeNone) m.report[kRepMergeDeferred]++;
  }
  m.report[m.mode == kModeKsm ? kRepMarkedTotal : kRepMergedTotal] = static_cast<double>(merged_total);
  if (m.mode == kModeKsm) m.report[kRepMarkedRuns] = static_cast<double>(CountRuns(m.state, m.pages, kMarked));
}

Napi::Value DedupMerge(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t cpu_start = ThreadCpuNs();
  MEMDEDUP_ARG(args, ArgPass(info, 0));
  auto [table, address, pages, state, hashes, config, report] = args;
  // The plan: no change to the state before every allocation is done (see NoAbort).
  std::vector<uint8_t> plan(pages);
  const double* cfg = config.data;
  RegionMerge m{*table, address, static_cast<uint32_t>(pages), static_cast<size_t>(sysconf(_SC_PAGESIZE)),
                state.data, hashes.data, report.data, plan.data(), static_cast<int>(cfg[kCfgMode]),
                cfg[kCfgBudgetNs] > 0 ? cfg[kCfgBudgetNs] : 0,
                static_cast<uint64_t>(std::min(std::max(cfg[kCfgRunAllowance], 0.0), 4294967295.0)), cpu_start,
                0, cfg[kCfgBudgetNs] < 0};

  PlanTwins(m);
  FailedStage failed = kStageNone;
  if (m.mode == kModeSksm) failed = MergeRuns(m);
  else if (m.mode == kModeKsm && PlanFills(m)) failed = MarkRuns(m);
  const int error = errno;
  const uint64_t merge_ns = ThreadCpuNs() - cpu_start;
  report.data[kRepMergeNs] = static_cast<double>(merge_ns);
  report.data[kRepCpuNs] += static_cast<double>(merge_ns);
  if (failed != kStageNone) {
    report.data[kRepFailedStage] = failed;
    return Napi::Number::New(env, -error);
  }
  FinishMerge(m);
  return Napi::Number::New(env, 0);
}

// dedupRelease(index, pages, state: Uint32Array, hashes: BigUint64Array) -> 0: gives
// back every hash the region holds in the index (untrack, close); clears the state.
Napi::Value DedupRelease(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(table, ArgTable(info, 0));
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
}  // namespace

void InitDedup(Napi::Env env, Napi::Object exports) {
  Export<DedupScan>(exports, "dedupScan");
  Export<DedupMerge>(exports, "dedupMerge");
  Export<DedupRelease>(exports, "dedupRelease");
  Export<ThreadCpuTime>(exports, "threadCpuNs");
  ExportLayout(exports, "dedupConfig", kConfigLength,
               {{"mode", kCfgMode}, {"stablePasses", kCfgStable}, {"backoffPasses", kCfgBackoff}, {"budgetNs", kCfgBudgetNs},
                {"runAllowance", kCfgRunAllowance}});
  ExportLayout(exports, "dedupReport", kReportLength,
               {{"written", kRepWritten}, {"candidates", kRepCandidates}, {"hashed", kRepHashed}, {"duplicates", kRepDuplicates},
                {"merged", kRepMerged}, {"cow", kRepCow}, {"mergedTotal", kRepMergedTotal}, {"unmarked", kRepUnmarked},
                {"deferred", kRepDeferred}, {"indexFull", kRepIndexFull}, {"wpLost", kRepWpLost}, {"cpuNs", kRepCpuNs},
                {"failedStage", kRepFailedStage}, {"scanNs", kRepScanNs}, {"hashNs", kRepHashNs}, {"mergeNs", kRepMergeNs},
                {"mergeDeferred", kRepMergeDeferred}, {"coarsened", kRepCoarsened}, {"markedRuns", kRepMarkedRuns},
                {"marked", kRepMarked}, {"markedTotal", kRepMarkedTotal}});
  ExportTable(exports, "dedupFailedStage",
              {{"pagemapScan", kStagePagemapScan}, {"madviseMerge", kStageMadviseMerge}, {"madviseMergeable", kStageMadviseMergeable},
               {"madviseUnmergeable", kStageMadviseUnmergeable}, {"pagemapRead", kStagePagemapRead}});
  ExportTable(exports, "dedupMode", {{"none", kModeNone}, {"sksm", kModeSksm}, {"ksm", kModeKsm}});
  ExportTable(exports, "dedupStateBit", {{"marked", kMarked}});
}

}  // namespace memdedup
