// C references for bench/core.bench.mjs: the raw syscalls each memdedup binding wraps, timed
// like harness.mjs medianNs (median over `iterations` batches of `batch` calls, after `warmup`).
// Usage: core <test> <iterations> <warmup> <batch> [bytes]   prints {"test": ..., "ns": median}
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#include "../../native/compat.h"  // PR_GET_MEMORY_MERGE, MADV_POPULATE_WRITE: one definition for C and the addon

static long page_size;
static void *page;            // 1-page mapping for the madvise tests
static void *big;             // populated mapping for the pagemap test
static size_t big_bytes;
static int pagemap_fd = -1;




static void madvise_mergeable(void) {
  if (madvise(page, page_size, MADV_MERGEABLE)) die("madvise(MADV_MERGEABLE)");
}

static void madvise_normal(void) {
  if (madvise(page, page_size, MADV_NORMAL)) die("madvise(MADV_NORMAL)");
}

static void prctl_get(void) {
  if (prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0) < 0) die("prctl(PR_GET_MEMORY_MERGE)");
}

static void mmap_munmap(void) {
  void *p = mmap(NULL, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  if (munmap(p, page_size)) die("munmap");
}

// What `r = Region.anonymous(4096); r.bytes[0] = 1; r.close()` must do while the view may still
// be used (lib/region/views.ts): write the page, replace it on close with zero-filled stand-in
// memory (mmap MAP_FIXED | MAP_NORESERVE), unmap the stand-in once the view is gone (memdedup: when
// it is collected; here at once).
static void mmap_write_standin(void) {
  char *p = mmap(NULL, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  p[0] = 1;
  if (mmap(p, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED) die("mmap(MAP_FIXED)");
  if (munmap(p, page_size)) die("munmap");
}

// Same bits and decode loop as native/pagemap.cc; fresh result arrays per call like pagemap.entries().
enum { kPresent = 1, kSwapped = 2, kFile = 4, kExclusive = 8, kSoftDirty = 16, kUffdWp = 32 };
static volatile uint64_t sink;

static void pagemap_entries(void) {
  size_t pages = big_bytes / page_size;
  uint64_t *entries = malloc(pages * sizeof(uint64_t));
  uint8_t *flags = malloc(pages);
  if (!entries || !flags) die("malloc");
  size_t want = pages * sizeof(uint64_t), done = 0;
  off_t offset = (off_t)((uintptr_t)big / page_size * sizeof(uint64_t));
  while (done < want) {
    ssize_t n = pread(pagemap_fd, (char *)entries + done, want - done, offset + done);
    if (n < 0) die("pread(/proc/self/pagemap)");
    if (n == 0) break;
    done += n;
  }
  size_t got = done / sizeof(uint64_t);
  for (size_t i = 0; i < got; i++) {
    uint64_t e = entries[i];
    int present = (e >> 63) & 1;
    flags[i] = (present ? kPresent : 0) | (((e >> 62) & 1) ? kSwapped : 0) | (((e >> 61) & 1) ? kFile : 0) |
               (((e >> 56) & 1) ? kExclusive : 0) | (((e >> 55) & 1) ? kSoftDirty : 0) |
               (((e >> 57) & 1) ? kUffdWp : 0);
    entries[i] = present ? (e & ((1ULL << 55) - 1)) : 0;
  }
  if (got != pages || !(flags[0] & kPresent)) {
    fprintf(stderr, "pagemap: %zu of %zu entries, first present=%d\n", got, pages, flags[0] & kPresent);
    exit(1);
  }
  sink += entries[pages - 1];
  free(entries);
  free(flags);
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s <madvise_mergeable|madvise_normal|prctl_get|mmap_munmap|mmap_write_standin|pagemap_entries> <iterations> <warmup> <batch> [bytes]\n", argv[0]);
    return 2;
  }
  const char *test = argv[1];
  int iterations = atoi(argv[2]), warmup = atoi(argv[3]), batch = atoi(argv[4]);
  page_size = sysconf(_SC_PAGESIZE);
  void (*fn)(void);
  if (!strcmp(test, "madvise_mergeable") || !strcmp(test, "madvise_normal")) {
    page = mmap(NULL, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) die("mmap");
    fn = test[8] == 'm' ? madvise_mergeable : madvise_normal;
  } else if (!strcmp(test, "prctl_get")) {
    fn = prctl_get;
  } else if (!strcmp(test, "mmap_munmap")) {
    fn = mmap_munmap;
  } else if (!strcmp(test, "mmap_write_standin")) {
    fn = mmap_write_standin;
  } else if (!strcmp(test, "pagemap_entries")) {
    big_bytes = argc > 5 ? strtoull(argv[5], NULL, 0) : 1ULL << 30;
    big = mmap(NULL, big_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (big == MAP_FAILED) die("mmap");
    if (madvise(big, big_bytes, MADV_POPULATE_WRITE)) die("madvise(MADV_POPULATE_WRITE)");
    pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap_fd < 0) die("open(/proc/self/pagemap)");
    fn = pagemap_entries;
  } else {
    fprintf(stderr, "unknown test %s\n", test);
    return 2;
  }

  for (int i = 0; i < warmup; i++) fn();
  double *samples = calloc(iterations, sizeof(double));
  for (int i = 0; i < iterations; i++) {
    double start = now_ns();
    for (int j = 0; j < batch; j++) fn();
    samples[i] = (now_ns() - start) / batch;
  }
  double median = median_of(samples, iterations);
  printf("{\"test\": \"%s\", \"ns\": %.3f, \"iterations\": %d, \"batch\": %d}\n", test, median, iterations, batch);
  return 0;
}
