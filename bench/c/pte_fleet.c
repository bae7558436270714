// Fleet for bench/pte.mjs: N small processes map the same memory and touch every page; the
// page tables they cost are then read while all of them are alive.
// Usage: pte_fleet <mode> <n> <bytes> [mshare_path mshare_size]
//   none     children map nothing (the baseline every other row is measured against)
//   memfd    MAP_SHARED of one memfd (pages populated by the parent first): 4 KiB PTEs each
//   hugetlb  MAP_SHARED of one 2 MiB hugetlb memfd at a 1 GiB-aligned address: PMD sharing
//            applies to every whole aligned GiB the mapping covers
//   mshare   mmap of an msharefs file (created, sized, mapped and populated by the caller)
//   sksm     private anonymous memory, written (identical content in every child), then merged
//            with madvise(MADV_MERGE) in 16 MiB steps: the page tables that remain after merging
// All N children are forked first and wait; then, one after another, each maps and touches its
// pages, reports its fault-in time and pauses. With all N alive the parent reads the growth of
// VmPTE of each (/proc/<pid>/status, against the child's own reading before it mapped), the
// change of nr_page_table_pages (/proc/vmstat) since all were forked, ksm_merging_pages, then
// kills them. Prints one JSON object: vmPteSum and pageTableBytesDelta are the mapping's cost.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "../../native/compat.h"

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB (21U << 26)
#endif

#define GiB (1UL << 30)
#define STEP (16UL << 20)

struct slot {
  int ready;  // 2 forked and waiting, 1 mapped and touched, -1 failed (errno in err)
  int go;     // futex word: the parent sets it to 1 to let this child map
  volatile int err;
  volatile long vm_pte_before;  // the child's own VmPTE before it mapped anything
  volatile double fault_ns;
  volatile double merge_ns;
};

// Shared (not private) futex: parent and children are different processes.
static void futex_wait(int *word, int value) {
  while (__atomic_load_n(word, __ATOMIC_ACQUIRE) == value) syscall(SYS_futex, word, FUTEX_WAIT, value, NULL, NULL, 0);
}
static void futex_wake(int *word) {
  syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static long page_size;

// Per-CPU counter deltas are folded into /proc/vmstat only now and then: vm.stat_refresh folds
// them at once (root), so the before/after difference is exact rather than off by a batch.
static void refresh_vmstat(void) {
  int fd = open("/proc/sys/vm/stat_refresh", O_WRONLY);
  if (fd < 0) return;
  if (write(fd, "1", 1) < 0) { /* not root: the counter is approximate */ }
  close(fd);
}

static long read_vmstat(const char *key) {
  refresh_vmstat();
  FILE *f = fopen("/proc/vmstat", "r");
  char name[128];
  long value;
  if (!f) die("/proc/vmstat");
  while (fscanf(f, "%127s %ld", name, &value) == 2) {
    if (strcmp(name, key) == 0) {
      fclose(f);
      return value;
    }
  }
  fclose(f);
  return -1;
}

// A "Key:   123 kB" field of /proc/<pid>/status, in bytes; or a plain number file.
static long read_status_kb(pid_t pid, const char *key) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  FILE *f = fopen(path, "r");
  long value = -1;
  if (!f) return -1;
  size_t len = strlen(key);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, len) == 0 && line[len] == ':') {
      value = strtol(line + len + 1, NULL, 10) * 1024;
      break;
    }
  }
  fclose(f);
  return value;
}

static long read_number_file(pid_t pid, const char *name) {
  char path[64];
  long value = -1;
  snprintf(path, sizeof path, "/proc/%d/%s", pid, name);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  if (fscanf(f, "%ld", &value) != 1) value = -1;
  fclose(f);
  return value;
}

// Reads one byte of every page (a read fault maps the page-cache page; fault-around maps up to
// 16 at once, as it would for any reader of shared memory).
static void touch_read(volatile const char *p, size_t bytes) {
  unsigned long sum = 0;
  for (size_t off = 0; off < bytes; off += page_size) sum += p[off];
  (void)sum;
}

static char *aligned_reserve(size_t bytes, size_t align) {
  char *base = mmap(NULL, bytes + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return NULL;
  char *start = (char *)(((uintptr_t)base + align - 1) & ~(uintptr_t)(align - 1));
  return start;
}

static int child(const char *mode, int fd, size_t bytes, const char *mshare_path, size_t mshare_size, struct slot *slot) {
  double t0 = now_ns();
  if (strcmp(mode, "none") == 0) {
    // nothing mapped
  } else if (strcmp(mode, "memfd") == 0) {
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return errno;
    touch_read(p, bytes);
  } else if (strcmp(mode, "hugetlb") == 0) {
    char *at = aligned_reserve(bytes, GiB);
    if (!at) return errno;
    char *p = mmap(at, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
    if (p == MAP_FAILED) return errno;
    touch_read(p, bytes);
  } else if (strcmp(mode, "mshare") == 0) {
    int mfd = open(mshare_path, O_RDWR);
    if (mfd < 0) return errno;
    char *p = mmap(NULL, mshare_size, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    if (p == MAP_FAILED) return errno;
    touch_read(p, bytes);
  } else if (strcmp(mode, "sksm") == 0) {
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return errno;
    madvise(p, bytes, MADV_NOHUGEPAGE);  // 4 KiB PTEs, like the other rows
    double merge = 0;
    for (size_t step = 0; step < bytes; step += STEP) {
      size_t len = bytes - step < STEP ? bytes - step : STEP;
      // Same content in every child, distinct per page: the page's index, then zeros.
      for (size_t off = step; off < step + len; off += page_size) *(uint64_t *)(p + off) = off / page_size + 1;
      double m0 = now_ns();
      if (madvise(p + step, len, MADV_MERGE) != 0) return errno;
      merge += now_ns() - m0;
    }
    slot->merge_ns = merge;
    slot->fault_ns = now_ns() - t0 - merge;
    return 0;
  } else {
    return EINVAL;
  }
  slot->fault_ns = now_ns() - t0;
  return 0;
}

static int populated_memfd(size_t bytes, int huge) {
  int fd = memfd_create(huge ? "pte-bench-huge" : "pte-bench", MFD_CLOEXEC | (huge ? MFD_HUGETLB | MFD_HUGE_2MB : 0));
  if (fd < 0) die("memfd_create");
  if (ftruncate(fd, bytes) != 0) die("ftruncate");
  char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) die("mmap memfd");
  for (size_t off = 0; off < bytes; off += page_size) p[off] = 1;
  munmap(p, bytes);
  return fd;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: pte_fleet none|memfd|hugetlb|mshare|sksm <n> <bytes> [mshare_path mshare_size]\n");
    return 2;
  }
  page_size = sysconf(_SC_PAGESIZE);
  const char *mode = argv[1];
  int n = atoi(argv[2]);
  size_t bytes = strtoull(argv[3], NULL, 10);
  const char *mshare_path = argc > 4 ? argv[4] : NULL;
  size_t mshare_size = argc > 5 ? strtoull(argv[5], NULL, 10) : 0;
  if (n <= 0 || bytes == 0 || bytes % page_size) {
    fprintf(stderr, "bad n or bytes\n");
    return 2;
  }
  if (strcmp(mode, "mshare") == 0 && (!mshare_path || !mshare_size)) {
    fprintf(stderr, "mshare needs a path and the region size\n");
    return 2;
  }
  int fd = -1;
  if (strcmp(mode, "memfd") == 0) fd = populated_memfd(bytes, 0);
  if (strcmp(mode, "hugetlb") == 0) fd = populated_memfd(bytes, 1);
  struct slot *slots = mmap(NULL, sizeof(struct slot) * n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  pid_t *pids = calloc(n, sizeof(pid_t));
  if (slots == MAP_FAILED || !pids) die("alloc");

  // All children are forked first and wait (their page tables exist, nothing is mapped), so the
  // counters taken now are the baseline of this very run: no second run with its own address
  // space layout (ASLR moves a process's tables by a page or two) to subtract.
  for (int i = 0; i < n; i++) {
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
      slots[i].vm_pte_before = read_status_kb(getpid(), "VmPTE");
      __atomic_store_n(&slots[i].ready, 2, __ATOMIC_RELEASE);
      futex_wait(&slots[i].go, 0);
      int err = child(mode, fd, bytes, mshare_path, mshare_size, &slots[i]);
      slots[i].err = err;
      __atomic_store_n(&slots[i].ready, err ? -1 : 1, __ATOMIC_RELEASE);
      if (err) _exit(1);
      for (;;) pause();
    }
    pids[i] = pid;
    while (__atomic_load_n(&slots[i].ready, __ATOMIC_ACQUIRE) == 0) usleep(200);
  }
  long before = read_vmstat("nr_page_table_pages");
  double t0 = now_ns();
  int failed = 0, failed_errno = 0, started = n;
  // One child at a time maps and touches: fault-in times are not a contest between children.
  for (int i = 0; i < n; i++) {
    __atomic_store_n(&slots[i].go, 1, __ATOMIC_RELEASE);
    futex_wake(&slots[i].go);
    while (__atomic_load_n(&slots[i].ready, __ATOMIC_ACQUIRE) == 2) usleep(200);
    if (slots[i].ready < 0) {
      failed = i + 1;
      failed_errno = slots[i].err;
      started = i + 1;
      break;
    }
  }
  double wall = now_ns() - t0;
  long after = read_vmstat("nr_page_table_pages");
  long vm_pte_sum = 0, merging = 0;
  double *faults = calloc(n, sizeof(double)), *merges = calloc(n, sizeof(double));
  for (int i = 0; i < n; i++) {
    long pte = read_status_kb(pids[i], "VmPTE");
    if (i < started && pte > 0) vm_pte_sum += pte - slots[i].vm_pte_before;
    long m = read_number_file(pids[i], "ksm_merging_pages");
    if (m > 0) merging += m;
    faults[i] = slots[i].fault_ns;
    merges[i] = slots[i].merge_ns;
  }
  for (int i = 0; i < n; i++) kill(pids[i], SIGKILL);
  for (int i = 0; i < n; i++) waitpid(pids[i], NULL, 0);
  n = started;
  double fault_total = 0;
  for (int i = 0; i < n; i++) fault_total += faults[i];
  printf("{\"mode\":\"%s\",\"n\":%d,\"bytes\":%zu,\"vmPteSum\":%ld,\"pageTablePagesDelta\":%ld,\"pageTableBytesDelta\":%ld,"
         "\"faultNsMedian\":%.0f,\"faultNsTotal\":%.0f,\"mergeNsMedian\":%.0f,\"ksmMergingPages\":%ld,\"wallNs\":%.0f,"
         "\"failedChild\":%d,\"failedErrno\":%d,\"failedError\":\"%s\"}\n",
         mode, n, bytes, vm_pte_sum, after - before, (after - before) * page_size, median_of(faults, n), fault_total,
         median_of(merges, n), merging, wall, failed, failed_errno, failed ? strerror(failed_errno) : "");
  return 0;
}
