// C reference for bench/sksm.bench.mjs: madvise(MADV_MERGE) timed like harness.mjs medianNs.
// Usage: sksm_merge <test> <iterations> [bytes]   prints {"test": ..., "ns": median of iterations}
//   untouched  one call on 1 page never touched: the syscall, lru_add_drain_all(), no page
//   dedup      <bytes> whose every page duplicates an already merged copy: write-protect,
//              checksum, compare, replace and free each page (rewritten before each timed call)
//   index      <bytes> of pages with no twin: write-protect, checksum, insert (new content each time)
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "../../native/compat.h"  // MADV_MERGE: one definition for C and the addon

static long page;

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static char *map(size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	madvise(p, len, MADV_NOHUGEPAGE); /* 4 KiB pages, as the JS side */
	return p;
}

/* the same layout as sksm.bench.mjs's fill(): per-page distinct, never zero */
static void fill(char *p, size_t len, uint64_t seed)
{
	for (size_t off = 0; off < len; off += page) {
		uint64_t *w = (uint64_t *)(p + off);

		w[0] = seed;
		w[1] = off / page + 1;
	}
}

static void merge(char *p, size_t len)
{
	if (madvise(p, len, MADV_MERGE)) {
		fprintf(stderr, "madvise(MADV_MERGE): %s\n", strerror(errno));
		exit(errno == EINVAL ? 2 : 1);
	}
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s <untouched|dedup|index> <iterations> [bytes]\n", argv[0]);
		return 2;
	}
	const char *test = argv[1];
	int iterations = atoi(argv[2]);
	size_t bytes = argc > 3 ? strtoull(argv[3], NULL, 0) : 64 << 20;
	double *samples = calloc(iterations, sizeof(double));
	uint64_t seed = ((uint64_t)getpid() << 32) ^ (uint64_t)now_ns();

	page = sysconf(_SC_PAGESIZE);
	if (!strcmp(test, "untouched")) {
		char *p = map(page);

		for (int i = 0; i < iterations; i++) {
			double t = now_ns();

			merge(p, page);
			samples[i] = now_ns() - t;
		}
	} else if (!strcmp(test, "dedup")) {
		char *original = map(bytes), *twin = map(bytes);

		fill(original, bytes, seed);
		merge(original, bytes);
		for (int i = 0; i < iterations; i++) {
			fill(twin, bytes, seed); /* COWs the merged pages back to private copies */
			double t = now_ns();

			merge(twin, bytes);
			samples[i] = now_ns() - t;
		}
	} else if (!strcmp(test, "index")) {
		char *p = map(bytes);

		for (int i = 0; i < iterations; i++) {
			fill(p, bytes, seed + i + 1);
			double t = now_ns();

			merge(p, bytes);
			samples[i] = now_ns() - t;
		}
	} else {
		fprintf(stderr, "unknown test %s\n", test);
		return 2;
	}
	qsort(samples, iterations, sizeof(double), cmp);
	double median = iterations % 2 ? samples[iterations / 2] : (samples[iterations / 2 - 1] + samples[iterations / 2]) / 2;
	printf("{\"test\": \"%s\", \"ns\": %.3f, \"iterations\": %d, \"bytes\": %zu}\n", test, median, iterations, bytes);
	return 0;
}
