// C reference for bench/ksm.bench.mjs: the timing tests of Linux 6.12
// tools/testing/selftests/mm/ksm_tests.c, with two deliberate differences:
//  - merge time ends when this process's pages are merged (/proc/self/ksm_merging_pages reaches
//    the expected count), not after 2 full_scans: that is the time to savings, and a per-process
//    counter is not disturbed by other processes' KSM pages;
//  - ksmd is stopped with run=0 (never run=2, which would unmerge every process's pages) and is
//    stopped again right after the merge, so it does not burn a CPU during the other timings.
// Usage:
//   ksm_perf merge <MiB> <pages_to_scan> [timeout_s]  -P then -D: merge time of identical pages,
//                                                      then MADV_UNMERGEABLE time of those pages
//   ksm_perf cow <MiB> <pages_to_scan> [timeout_s]     -C: write 1 byte to every other page, not
//                                                      merged vs merged (pairs of equal pages)
// Prints one JSON object. Saves and restores every /sys/kernel/mm/ksm file it writes.
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define KSM "/sys/kernel/mm/ksm/"

static unsigned long saved_run, saved_pages_to_scan, saved_sleep;


static unsigned long read_ul(const char *path) {
  FILE *f = fopen(path, "r");
  unsigned long value;
  if (!f) die(path);
  if (fscanf(f, "%lu", &value) != 1) die(path);
  fclose(f);
  return value;
}

static void write_ul(const char *path, unsigned long value) {
  FILE *f = fopen(path, "w");
  if (!f) die(path);
  if (fprintf(f, "%lu", value) < 0 || fclose(f)) die(path);
}

static void restore(void) {
  write_ul(KSM "run", 0);
  write_ul(KSM "pages_to_scan", saved_pages_to_scan);
  write_ul(KSM "sleep_millisecs", saved_sleep);
  write_ul(KSM "run", saved_run);
}


static unsigned long merging_pages(void) { return read_ul("/proc/self/ksm_merging_pages"); }

// madvise(MADV_MERGEABLE), start ksmd, poll every 1 ms until `expected` pages of ours are merged.
static void merge(void *p, size_t bytes, unsigned long expected, int timeout_s) {
  double deadline = now_ns() + timeout_s * 1e9;
  if (madvise(p, bytes, MADV_MERGEABLE)) die("madvise(MADV_MERGEABLE)");
  write_ul(KSM "run", 1);
  while (merging_pages() < expected) {
    if (now_ns() > deadline) {
      fprintf(stderr, "timeout: %lu of %lu pages merged after %d s\n", merging_pages(), expected, timeout_s);
      restore();
      exit(1);
    }
    nanosleep(&(struct timespec){0, 1000000}, NULL);
  }
  write_ul(KSM "run", 0);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s merge|cow <MiB> <pages_to_scan> [timeout_s]\n", argv[0]);
    return 2;
  }
  const char *mode = argv[1];
  size_t bytes = strtoul(argv[2], NULL, 0) << 20;
  unsigned long pages_to_scan = strtoul(argv[3], NULL, 0);
  int timeout_s = argc > 4 ? atoi(argv[4]) : 60;
  long page_size = sysconf(_SC_PAGESIZE);
  size_t pages = bytes / page_size;

  saved_run = read_ul(KSM "run");
  saved_pages_to_scan = read_ul(KSM "pages_to_scan");
  saved_sleep = read_ul(KSM "sleep_millisecs");
  unsigned long max_page_sharing = read_ul(KSM "max_page_sharing");
  write_ul(KSM "run", 0);
  write_ul(KSM "pages_to_scan", pages_to_scan);
  write_ul(KSM "sleep_millisecs", 0);

  // ksm_tests.c allocate_memory(): map, fill with '*'.
  char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  memset(p, '*', bytes);

  if (!strcmp(mode, "merge")) {
    // All pages equal: groups of max_page_sharing; a lone leftover page cannot merge.
    unsigned long expected = pages - (pages % max_page_sharing == 1);
    double t0 = now_ns();
    merge(p, bytes, expected, timeout_s);
    double t1 = now_ns();
    if (madvise(p, bytes, MADV_UNMERGEABLE)) die("madvise(MADV_UNMERGEABLE)");
    double t2 = now_ns();
    printf("{\"bytes\": %zu, \"mergeNs\": %.0f, \"unmergeNs\": %.0f, \"mergedPages\": %lu}\n", bytes, t1 - t0,
           t2 - t1, expected);
  } else if (!strcmp(mode, "cow")) {
    double t0 = now_ns();
    for (size_t i = 0; i + 1 < pages; i += 2) p[page_size * i] = '-';
    double t1 = now_ns();
    // Pairs of equal pages, each pair different (ksm_tests.c uses memset lengths; an index scales further).
    for (size_t i = 0; i + 1 < pages; i += 2) {
      uint64_t pair = i / 2 + 1;
      memset(p + page_size * i, '+', page_size);
      memcpy(p + page_size * i + 8, &pair, sizeof pair);
      memcpy(p + page_size * (i + 1), p + page_size * i, page_size);
    }
    merge(p, bytes, pages, timeout_s);
    double t2 = now_ns();
    for (size_t i = 0; i + 1 < pages; i += 2) p[page_size * i] = '-';
    double t3 = now_ns();
    printf("{\"bytes\": %zu, \"writtenPages\": %zu, \"cowUnmergedNs\": %.0f, \"cowMergedNs\": %.0f}\n", bytes,
           pages / 2, t1 - t0, t3 - t2);
  } else {
    fprintf(stderr, "unknown mode %s\n", mode);
    restore();
    return 2;
  }
  munmap(p, bytes);
  restore();
  return 0;
}
