// C reference for bench/pagemap-scan.bench.mjs: PAGEMAP_SCAN write tracking on a uffd
// WP_ASYNC-registered anonymous mapping, timed like harness.mjs (median over iterations).
// Usage: pagemap_scan <test> <iterations> <warmup> <bytes> <vec_len> [divisor]
//   scan_clean   populated + armed, nothing written: one get+WP scan (ns per scan)
//   scan_sparse  1/<divisor> of the pages written (untimed) before each timed get+WP scan
//   arm_first    first arming: get + WP of a range never protected (unregister/register between
//                iterations, untimed, resets the WP bits) (ns per scan)
//   async_fault  first write to each armed page, WP_ASYNC resolving the fault (ns per page)
// Prints {"test": ..., "ns": median, "regions": n}.
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#include "../../native/compat.h"  // PAGEMAP_SCAN, UFFD_FEATURE_WP_ASYNC, …: one definition for C and the addon

static long page_size;
static int uffd = -1, pagemap_fd = -1;
static char *mem;
static size_t bytes;
static struct page_region *vec;
static size_t vec_len;
static long last_regions;




static void uffd_register(void) {
  struct uffdio_register reg = {.range = {(uintptr_t)mem, bytes}, .mode = UFFDIO_REGISTER_MODE_WP};
  if (ioctl(uffd, UFFDIO_REGISTER, &reg)) die("UFFDIO_REGISTER");
}

static void uffd_unregister(void) {
  struct uffdio_range range = {(uintptr_t)mem, bytes};
  if (ioctl(uffd, UFFDIO_UNREGISTER, &range)) die("UFFDIO_UNREGISTER");
}

// The scanner's per-pass query: written pages, re-armed in the same call. A full vector stops
// the walk; like memdedup's scan() this is one ioctl, callers resume from walk_end.
static long scan_wp(void) {
  struct pm_scan_arg arg = {
      .size = sizeof(arg),
      .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
      .start = (uintptr_t)mem,
      .end = (uintptr_t)mem + bytes,
      .vec = (uintptr_t)vec,
      .vec_len = vec_len,
      .category_mask = PAGE_IS_WRITTEN,
      .return_mask = PAGE_IS_WRITTEN,
  };
  long n = ioctl(pagemap_fd, PAGEMAP_SCAN, &arg);
  if (n < 0) die("PAGEMAP_SCAN");
  return n;
}

static void dirty(size_t divisor) {
  for (size_t off = 0; off < bytes; off += divisor * page_size) mem[off]++;
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: %s test iterations warmup bytes vec_len [divisor]\n", argv[0]);
    return 2;
  }
  const char *test = argv[1];
  int iterations = atoi(argv[2]), warmup = atoi(argv[3]);
  bytes = strtoull(argv[4], NULL, 0);
  vec_len = strtoull(argv[5], NULL, 0);
  size_t divisor = argc > 6 ? strtoull(argv[6], NULL, 0) : 8;
  page_size = sysconf(_SC_PAGESIZE);

  uffd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (uffd < 0) die("userfaultfd");
  struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED};
  if (ioctl(uffd, UFFDIO_API, &api)) die("UFFDIO_API");
  pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (pagemap_fd < 0) die("open(/proc/self/pagemap)");
  vec = calloc(vec_len ? vec_len : 1, sizeof(*vec));
  mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) die("mmap");
  if (madvise(mem, bytes, MADV_POPULATE_WRITE)) die("madvise(MADV_POPULATE_WRITE)");
  uffd_register();
  scan_wp();  // arm

  double *samples = calloc(iterations, sizeof(double));
  for (int i = -warmup; i < iterations; i++) {
    double t0, t1;
    if (!strcmp(test, "scan_clean")) {
      t0 = now_ns();
      last_regions = scan_wp();
      t1 = now_ns();
    } else if (!strcmp(test, "scan_sparse")) {
      dirty(divisor);
      t0 = now_ns();
      last_regions = scan_wp();
      t1 = now_ns();
    } else if (!strcmp(test, "arm_first")) {
      uffd_unregister();  // clears the WP bits: every page reads as written again
      uffd_register();
      t0 = now_ns();
      last_regions = scan_wp();
      t1 = now_ns();
    } else if (!strcmp(test, "async_fault")) {
      t0 = now_ns();
      dirty(1);
      t1 = now_ns();
      last_regions = scan_wp();  // re-arm (untimed)
      t1 = t0 + (t1 - t0) / (bytes / page_size);
    } else {
      fprintf(stderr, "unknown test %s\n", test);
      return 2;
    }
    if (i >= 0) samples[i] = t1 - t0;
  }
  double median = median_of(samples, iterations);
  printf("{\"test\": \"%s\", \"ns\": %.1f, \"regions\": %ld}\n", test, median, last_regions);
  return 0;
}
