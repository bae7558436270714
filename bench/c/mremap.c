// C reference for bench/mremap.bench.mjs: the perf cases of tools/testing/selftests/mm/mremap_test.c
// (Linux 6.12): a populated region whose source and destination are aligned to `align` (and not
// to twice it) moved with mremap(MREMAP_MAYMOVE | MREMAP_FIXED); only the mremap is timed.
// Usage: mremap <align> <size> <iterations>   prints {"ns": median, "samples": n}
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench.h"

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s <align> <size> <iterations>\n", argv[0]);
    return 2;
  }
  size_t align = strtoull(argv[1], NULL, 0), size = strtoull(argv[2], NULL, 0);
  int iterations = atoi(argv[3]);
  double *samples = calloc(iterations, sizeof(double));
  // One reservation holds source and destination: start aligned to 2 * align, the source at
  // +align (aligned to align, not to 2 * align), the destination the C's way: past the source's
  // end by align, aligned down, then moved to an odd multiple of align.
  size_t span = 4 * align + 2 * size + 2 * align;
  for (int i = 0; i < iterations; i++) {
    char *base = mmap(NULL, span + 2 * align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) die("mmap reservation");
    char *aligned = (char *)(((uintptr_t)base + 2 * align - 1) & ~(uintptr_t)(2 * align - 1));
    char *src = aligned + align;
    if (mmap(src, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0) == MAP_FAILED) die("mmap src");
    if (madvise(src, size, MADV_POPULATE_WRITE)) die("madvise(MADV_POPULATE_WRITE)");
    uintptr_t dest = ((uintptr_t)src + size + align) & ~(uintptr_t)(align - 1);
    if (!(dest & align)) dest |= align;
    double start = now_ns();
    void *moved = mremap(src, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)dest);
    double end = now_ns();
    if (moved == MAP_FAILED) die("mremap");
    samples[i] = end - start;
    if (munmap(base, span + 2 * align)) die("munmap");
  }
  printf("{\"ns\": %.0f, \"samples\": %d}\n", median_of(samples, iterations), iterations);
  return 0;
}
