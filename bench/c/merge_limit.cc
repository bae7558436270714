// bench:merge's measurements, all in one process of one boot (bench/merge.mjs prints the table):
//   merge   madvise(MADV_MERGE) over <pages> pages in runs of <run> pages: ns per page
//   limit   what a merge must do at least, per page, on the same data: read the page and its
//           twin, XXH64 the page (native/xxh64.h, the Deduplicator's hash), compare it with the
//           twin 8 bytes at a time (as the kernel's memcmp)
//   ksmd    ksmd at full speed (sleep_millisecs 0) merging or scanning <pages> marked pages:
//           its CPU (from /proc/<ksmd>/stat) per page
//   vmas    one madvise(MADV_MERGE) over <pages> pages split into <run> vmas (a PROT_NONE page
//           between two, so they cannot merge): ns per page; linear in pages means the same
//           per-page cost for 1, 100 and 10,000 vmas
//   fork    fork() + the child's _exit() + waitpid() of a process holding <pages> pages, merged
//           (dup: every page a KSM page, each with its rmap_item) or not (unique: private pages):
//           ns per fork. Kernel patch 0055 gives the child an rmap_item per inherited KSM page.
//   procs   <run> processes at once, each MADV_MERGEs its own <pages> pages (dup: twins of the
//           same merged content), released together: wall ns per page of all of them. Against
//           <run> = 1, how much of the merge runs in parallel (ksm_thread_mutex serialises).
// Content: dup (every page has a twin already merged: stable-tree hit, replace, free) or unique
// (no twin anywhere: checksum and tree insert only). thp: the pages sit in 2 MiB-aligned
// MADV_HUGEPAGE memory, touched as huge pages when the kernel gives them (reported: thpPages, of
// the first round; every round maps its pages afresh).
// Usage: merge_limit merge|limit|ksmd|vmas|fork|procs <dup|unique> <thp|nothp> <pages> [run|vmas|procs] [rounds]
// Prints one JSON object. Needs root for ksmd (sysfs); merge needs the SKSM kernel.
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../native/compat.h"  // MADV_MERGE
#include "../../native/xxh64.h"
#include "bench.h"

static size_t page;

static unsigned char *map_pages(size_t pages, bool thp) {
  const size_t huge = 2 << 20, len = pages * page;
  // Over-map and align, so a THP-backed run starts on a huge page boundary.
  char *raw = static_cast<char *>(mmap(nullptr, len + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (raw == MAP_FAILED) die("mmap");
  char *p = reinterpret_cast<char *>((reinterpret_cast<uintptr_t>(raw) + huge - 1) & ~(huge - 1));
  if (madvise(p, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE) && thp) die("madvise(MADV_HUGEPAGE)");
  return reinterpret_cast<unsigned char *>(p);
}

// Per page distinct and never zero: seed, page number, and a pattern in the rest of the page.
static void fill(unsigned char *p, size_t pages, uint64_t seed) {
  for (size_t i = 0; i < pages; i++) {
    uint64_t *w = reinterpret_cast<uint64_t *>(p + i * page);
    for (size_t k = 0; k < page / 8; k++) w[k] = seed * 0x9E3779B97F4A7C15ULL + i * 131 + k;
  }
}

// AnonHugePages of the whole process, in pages of `page` (smaps_rollup).
static long thp_pages() {
  FILE *f = fopen("/proc/self/smaps_rollup", "r");
  if (!f) return -1;
  char line[256];
  long kb = 0;
  while (fgets(line, sizeof line, f)) sscanf(line, "AnonHugePages: %ld kB", &kb);
  fclose(f);
  return kb * 1024 / static_cast<long>(page);
}

// Equal pages? 8 bytes at a time, as the kernel's memcmp (lib/string.c) compares. Not libc's
// memcmp: its AVX2 loop costs ~15x more under TCG (the lab's CPU emulator) than this scalar one,
// which would make the floor depend on the emulator rather than on the work.
static bool same_page(const unsigned char *a, const unsigned char *b) {
  for (size_t k = 0; k < page; k += 8) {
    if (memdedup::xxh64::Load(a + k) != memdedup::xxh64::Load(b + k)) return false;
  }
  return true;
}

static void merge(unsigned char *p, size_t len) {
  if (madvise(p, len, MADV_MERGE)) {
    fprintf(stderr, "madvise(MADV_MERGE): %s\n", strerror(errno));
    exit(errno == EINVAL ? 2 : 1);
  }
}

// dup's twins: two merged copies of the content, so a merge of the data finds a stable node.
static void merge_twins(unsigned char *twin, unsigned char *twin2, size_t pages, uint64_t seed) {
  fill(twin, pages, seed);
  fill(twin2, pages, seed);
  merge(twin, pages * page);
  merge(twin2, pages * page);
}

static void write_sysfs(const char *name, const char *value) {
  char path[128];
  snprintf(path, sizeof path, "/sys/kernel/mm/ksm/%s", name);
  int fd = open(path, O_WRONLY);
  if (fd < 0 || write(fd, value, strlen(value)) < 0) die(path);
  close(fd);
}

static long read_sysfs(const char *name) {
  char path[128], buf[64] = {0};
  snprintf(path, sizeof path, "/sys/kernel/mm/ksm/%s", name);
  int fd = open(path, O_RDONLY);
  if (fd < 0 || read(fd, buf, sizeof buf - 1) < 0) die(path);
  close(fd);
  return atol(buf);
}

// ksmd's CPU so far in ns (utime + stime of /proc/<pid>/stat, clock ticks).
static double ksmd_cpu_ns(int pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  int fd = open(path, O_RDONLY);
  ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
  if (n < 0) die(path);
  close(fd);
  buf[n] = 0;
  const char *s = strrchr(buf, ')');  // fields after the command name, which may hold spaces
  unsigned long utime = 0, stime = 0;
  if (!s || sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2) die("parse stat");
  return (utime + stime) * 1e9 / sysconf(_SC_CLK_TCK);
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s merge|limit|ksmd dup|unique thp|nothp <pages> [run] [rounds] [ksmd-pid]\n", argv[0]);
    return 2;
  }
  page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const char *what = argv[1];
  const bool dup = !strcmp(argv[2], "dup"), thp = !strcmp(argv[3], "thp");
  const size_t pages = strtoull(argv[4], nullptr, 0);
  const size_t run = argc > 5 ? strtoull(argv[5], nullptr, 0) : 64;
  const int rounds = argc > 6 ? atoi(argv[6]) : 3;
  const uint64_t seed = (static_cast<uint64_t>(getpid()) << 32) ^ static_cast<uint64_t>(now_ns());
  // The twins: two merged copies of the content (dup), so a merge of `pages` finds a stable node.
  unsigned char *twin = map_pages(pages, false), *twin2 = map_pages(pages, false);
  unsigned char *data = map_pages(pages, thp);
  double samples[32];
  long thp_seen = 0;

  if (!strcmp(what, "limit")) {
    fill(twin, pages, seed);
    uint64_t sink = 0;
    for (int r = 0; r < rounds && r < 32; r++) {
      const long thp_before = thp_pages();
      data = map_pages(pages, thp);  // fresh each round, as merge's: THP-backed where the kernel gives it
      fill(data, pages, dup ? seed : seed + 1 + r);
      if (r == 0) thp_seen = thp_pages() - thp_before;
      const double t0 = now_ns();
      for (size_t i = 0; i < pages; i++) {
        sink += memdedup::HashPage(data + i * page, page);
        sink += same_page(data + i * page, twin + i * page);
      }
      samples[r] = (now_ns() - t0) / pages;
    }
    printf("{\"what\":\"limit\",\"content\":\"%s\",\"thp\":%s,\"thpPages\":%ld,\"pages\":%zu,\"nsPerPage\":%.1f,\"sink\":%llu}\n", argv[2],
           thp ? "true" : "false", thp_seen, pages, median_of(samples, rounds < 32 ? rounds : 32), static_cast<unsigned long long>(sink & 1));
    return 0;
  }

  if (!strcmp(what, "merge")) {
    if (dup) merge_twins(twin, twin2, pages, seed);
    for (int r = 0; r < rounds && r < 32; r++) {
      // A fresh mapping each round (never unmapped: each case is its own short process): a merged
      // round splits its huge pages, and written again they would come back as small pages.
      const long thp_before = thp_pages();
      data = map_pages(pages, thp);
      fill(data, pages, dup ? seed : seed + 1 + r);
      if (r == 0) thp_seen = thp_pages() - thp_before;
      const double t0 = now_ns();
      for (size_t first = 0; first < pages; first += run) merge(data + first * page, (first + run <= pages ? run : pages - first) * page);
      samples[r] = (now_ns() - t0) / pages;
    }
    printf("{\"what\":\"merge\",\"content\":\"%s\",\"thp\":%s,\"thpPages\":%ld,\"pages\":%zu,\"run\":%zu,\"nsPerPage\":%.1f}\n", argv[2],
           thp ? "true" : "false", thp_seen, pages, run, median_of(samples, rounds < 32 ? rounds : 32));
    return 0;
  }

  if (!strcmp(what, "vmas")) {
    const size_t vmas = run, each = pages / vmas;
    if (!vmas || each * vmas != pages) die("vmas: <pages> must be a multiple of the vma count");
    if (dup) merge_twins(twin, twin2, pages, seed);
    for (int r = 0; r < rounds && r < 32; r++) {
      // vma v is pages [v * each, (v + 1) * each) of the content, at v * (each + 1) of the span.
      const size_t span = pages + vmas;
      char *raw = static_cast<char *>(mmap(nullptr, span * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
      if (raw == MAP_FAILED) die("mmap");
      for (size_t v = 0; v < vmas; v++) {
        unsigned char *piece = reinterpret_cast<unsigned char *>(raw) + v * (each + 1) * page;
        if (mprotect(piece, each * page, PROT_READ | PROT_WRITE) || madvise(piece, each * page, MADV_NOHUGEPAGE)) die("mprotect");
        if (dup) memcpy(piece, twin + v * each * page, each * page);  // the twin's pages, in order
        else fill(piece, each, seed + 1 + static_cast<uint64_t>(r) * vmas + v);
      }
      const double t0 = now_ns();
      merge(reinterpret_cast<unsigned char *>(raw), span * page);
      samples[r] = (now_ns() - t0) / pages;
    }
    printf("{\"what\":\"vmas\",\"content\":\"%s\",\"pages\":%zu,\"vmas\":%zu,\"nsPerPage\":%.1f}\n", argv[2], pages, vmas,
           median_of(samples, rounds < 32 ? rounds : 32));
    return 0;
  }

  if (!strcmp(what, "fork")) {
    if (dup) merge_twins(twin, twin2, pages, seed);
    fill(data, pages, dup ? seed : seed + 1);
    if (dup) merge(data, pages * page);
    for (int r = 0; r < rounds && r < 32; r++) {
      const double t0 = now_ns();
      const pid_t child = fork();
      if (child < 0) die("fork");
      if (child == 0) _exit(0);
      int status;
      if (waitpid(child, &status, 0) != child || !WIFEXITED(status)) die("waitpid");
      samples[r] = now_ns() - t0;
    }
    printf("{\"what\":\"fork\",\"content\":\"%s\",\"pages\":%zu,\"nsPerFork\":%.1f}\n", argv[2], pages,
           median_of(samples, rounds < 32 ? rounds : 32));
    return 0;
  }

  if (!strcmp(what, "procs")) {
    const size_t procs = run;
    if (procs < 1 || procs > 64) die("procs: 1 to 64 processes");
    if (dup) merge_twins(twin, twin2, pages, seed);
    for (int r = 0; r < rounds && r < 32; r++) {
      int ready[2], go[2], done[2];
      if (pipe(ready) || pipe(go) || pipe(done)) die("pipe");
      for (size_t k = 0; k < procs; k++) {
        const pid_t child = fork();
        if (child < 0) die("fork");
        if (child == 0) {
          close(ready[0]);
          close(go[1]);
          close(done[0]);
          unsigned char *mine = map_pages(pages, thp);
          fill(mine, pages, dup ? seed : seed + 1 + r * procs + k);
          char c = 0;
          if (write(ready[1], &c, 1) != 1) die("write");
          if (read(go[0], &c, 1) != 0) die("read");  // EOF: released
          merge(mine, pages * page);
          if (write(done[1], &c, 1) != 1) die("write");  // before exit: its teardown is not the merge's
          _exit(0);
        }
      }
      close(ready[1]);
      close(go[0]);
      close(done[1]);
      for (size_t k = 0; k < procs; k++) {
        char c;
        if (read(ready[0], &c, 1) != 1) die("a child did not get ready");
      }
      const double t0 = now_ns();
      close(go[1]);
      for (size_t k = 0; k < procs; k++) {
        char c;
        if (read(done[0], &c, 1) != 1) break;  // a child failed: wait() says how
      }
      samples[r] = (now_ns() - t0) / (pages * procs);
      for (size_t k = 0; k < procs; k++) {
        int status;
        if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status)) die("a merging child failed");
      }
      close(ready[0]);
      close(done[0]);
    }
    printf("{\"what\":\"procs\",\"content\":\"%s\",\"pages\":%zu,\"procs\":%zu,\"nsPerPage\":%.1f}\n", argv[2], pages, procs,
           median_of(samples, rounds < 32 ? rounds : 32));
    return 0;
  }

  if (!strcmp(what, "ksmd")) {
    // dup: data and twin identical (ksmd merges pairs: `pages` pages shared); unique: 2 full scans.
    const int ksmd = argc > 7 ? atoi(argv[7]) : -1;
    if (ksmd <= 0) {
      fprintf(stderr, "ksmd: pass its pid (bench/merge.mjs finds it)\n");
      return 2;
    }
    fill(data, pages, seed);
    fill(twin, pages, dup ? seed : seed + 1);
    thp_seen = thp_pages();
    // Restored at the end: the knobs are global.
    char old_run[32], old_sleep[32], old_scan[32];
    snprintf(old_run, sizeof old_run, "%ld", read_sysfs("run") == 1 ? 1L : 0L);
    snprintf(old_sleep, sizeof old_sleep, "%ld", read_sysfs("sleep_millisecs"));
    snprintf(old_scan, sizeof old_scan, "%ld", read_sysfs("pages_to_scan"));
    write_sysfs("run", "2");  // unmerge everything left by earlier cases: a clean start
    write_sysfs("run", "0");
    write_sysfs("sleep_millisecs", "0");
    write_sysfs("pages_to_scan", "1000");
    if (madvise(data, pages * page, MADV_MERGEABLE) || madvise(twin, pages * page, MADV_MERGEABLE)) die("madvise(MADV_MERGEABLE)");
    const long scans = read_sysfs("full_scans");
    const double cpu0 = ksmd_cpu_ns(ksmd), t0 = now_ns();
    write_sysfs("run", "1");
    const double deadline = t0 + 600e9;
    long merged = 0;
    for (;;) {
      usleep(20000);
      merged = read_sysfs("pages_sharing");
      if (dup ? merged >= static_cast<long>(pages) : read_sysfs("full_scans") >= scans + 2) break;
      if (now_ns() > deadline) {
        fprintf(stderr, "ksmd: no result within 600 s (pages_sharing %ld)\n", merged);
        return 1;
      }
    }
    const double cpu = ksmd_cpu_ns(ksmd) - cpu0, wall = now_ns() - t0;
    write_sysfs("run", "2");
    write_sysfs("run", "0");
    write_sysfs("sleep_millisecs", old_sleep);
    write_sysfs("pages_to_scan", old_scan);
    write_sysfs("run", old_run);
    // dup: CPU per page merged; unique: per page scanned (2 scans of 2 x pages).
    printf("{\"what\":\"ksmd\",\"content\":\"%s\",\"thp\":%s,\"thpPages\":%ld,\"pages\":%zu,\"merged\":%ld,\"nsPerPage\":%.1f,\"wallMs\":%.0f}\n",
           argv[2], thp ? "true" : "false", thp_seen, pages, merged, dup ? cpu / pages : cpu / (4.0 * pages), wall / 1e6);
    return 0;
  }
  fprintf(stderr, "unknown measurement %s\n", what);
  return 2;
}
