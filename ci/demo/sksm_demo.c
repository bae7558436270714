// SPDX-License-Identifier: MIT
// Guest-side measurements for `npm run demo` (ci/demo.mjs), in C so 1000 processes fit and
// start fast under TCG. Two subcommands, one JSON object on stdout, progress on stderr:
//
//   sksm_demo libc <procs> sksm|ksm [--pages-to-scan N --sleep-ms N --cap-s S --target-fraction F]
//     The SKSM RFC's measurement: <procs> processes each COW every page of libc's text (as a
//     user-space code patcher would: mprotect rwx, rewrite each page with its own bytes,
//     mprotect r-x), then either madvise(MADV_MERGE) it (sksm) or madvise(MADV_MERGEABLE) it and
//     let ksmd run with the given knobs until F of the COWed pages are freed or S seconds passed.
//     Reports nr_anon_pages (/proc/vmstat) at baseline (all processes up), after COW and after
//     the merge, and the phase times.
//
//   sksm_demo bulk <MiB> sksm|ksm [--pages-to-scan N --sleep-ms N --cap-s S]
//     Time to savings for <MiB> of duplicates: two private anonymous mappings of <MiB> each with
//     identical, per-page distinct content (no THP, so both mechanisms see 4 KiB pages). sksm:
//     MADV_MERGE the first (index), then the second (dedup), each timed. ksm: MADV_MERGEABLE
//     both, ksmd with the given knobs, nr_anon_pages polled until all duplicates are freed or
//     S seconds passed.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_MERGE
#define MADV_MERGE 26 /* SKSM RFC */
#endif

static long page_size;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "sksm_demo: %s: %s\n", what, strerror(errno));
	exit(1);
}

static long vmstat(const char *key)
{
	char line[256];
	size_t len = strlen(key);
	long value = -1;
	FILE *f = fopen("/proc/vmstat", "r");

	if (!f)
		die("/proc/vmstat");
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, len) && line[len] == ' ') {
			value = atol(line + len + 1);
			break;
		}
	fclose(f);
	return value;
}

static long ksm_read(const char *file)
{
	char path[128], buf[64];
	int fd;
	ssize_t n;

	snprintf(path, sizeof(path), "/sys/kernel/mm/ksm/%s", file);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	return atol(buf);
}

static void ksm_write(const char *file, long value)
{
	char path[128], buf[32];
	int fd, n;

	snprintf(path, sizeof(path), "/sys/kernel/mm/ksm/%s", file);
	fd = open(path, O_WRONLY);
	if (fd < 0)
		die(path);
	n = snprintf(buf, sizeof(buf), "%ld", value);
	if (write(fd, buf, n) != n)
		die(path);
	close(fd);
}

struct ksm_knobs {
	long run, pages_to_scan, sleep_ms;
};

static struct ksm_knobs ksm_start(long pages_to_scan, long sleep_ms)
{
	struct ksm_knobs saved = { ksm_read("run"), ksm_read("pages_to_scan"), ksm_read("sleep_millisecs") };

	if (saved.run < 0)
		die("KSM sysfs (/sys/kernel/mm/ksm)");
	ksm_write("pages_to_scan", pages_to_scan);
	ksm_write("sleep_millisecs", sleep_ms);
	ksm_write("run", 1);
	return saved;
}

static void ksm_restore(struct ksm_knobs saved)
{
	ksm_write("run", 0);
	ksm_write("pages_to_scan", saved.pages_to_scan);
	ksm_write("sleep_millisecs", saved.sleep_ms);
	ksm_write("run", saved.run == 2 ? 0 : saved.run);
}

/* Polls nr_anon_pages until it is <= target or cap_s passed; prints a JSON timeline. */
static double ksm_wait(long start_pages, long target, double cap_s, double t0, long *reached)
{
	double next_report = t0, t;
	long pages;
	int first = 1;

	printf("\"timeline\":[");
	for (;;) {
		t = now_s();
		pages = vmstat("nr_anon_pages");
		if (t >= next_report || pages <= target) {
			printf("%s[%.2f,%ld,%ld,%ld]", first ? "" : ",", t - t0, pages, ksm_read("pages_sharing"), ksm_read("full_scans"));
			first = 0;
			fprintf(stderr, "  ksmd: %6.1f s  freed %ld of %ld pages (%.1f%%), full scans %ld\n", t - t0,
				start_pages - pages, start_pages - target, 100.0 * (start_pages - pages) / (start_pages - target),
				ksm_read("full_scans"));
			next_report = t + (cap_s > 60 ? 5 : 2);
		}
		if (pages <= target || t - t0 >= cap_s)
			break;
		usleep(100 * 1000);
	}
	printf("],");
	*reached = pages;
	return pages <= target ? t - t0 : -1;
}

/* ---- libc: N processes COW libc's text, then merge ---------------------------------------- */

static int find_libc_text(char **start, size_t *len)
{
	char line[512];
	FILE *maps = fopen("/proc/self/maps", "r");
	unsigned long lo, hi;
	char perms[8];

	if (!maps)
		return -1;
	while (fgets(line, sizeof(line), maps)) {
		if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3)
			continue;
		if (strcmp(perms, "r-xp") || !strstr(line, "/libc.so.6"))
			continue;
		fclose(maps);
		*start = (char *)lo;
		*len = hi - lo;
		return 0;
	}
	fclose(maps);
	return -1;
}

struct report {
	int32_t err;
	uint32_t usec;
};

static void child_main(int go_cow, int go_merge, int done, int hold, int use_sksm)
{
	struct report r = { 0, 0 };
	char *text = NULL, c;
	size_t len = 0, off;
	double t;

	if (find_libc_text(&text, &len))
		r.err = ENOENT;
	if (write(done, &r, sizeof(r)) != sizeof(r)) /* ready */
		_exit(1);
	if (read(go_cow, &c, 1) != 1)
		_exit(1);
	/* code patching: make the text writable, write every page back, restore r-x */
	if (!r.err && mprotect(text, len, PROT_READ | PROT_WRITE | PROT_EXEC))
		r.err = errno;
	for (off = 0; !r.err && off < len; off += page_size) {
		volatile char *p = text + off;
		*p = *p;
	}
	if (!r.err && mprotect(text, len, PROT_READ | PROT_EXEC))
		r.err = errno;
	if (write(done, &r, sizeof(r)) != sizeof(r))
		_exit(1);
	if (read(go_merge, &c, 1) != 1)
		_exit(1);
	t = now_s();
	if (!r.err && madvise(text, len, use_sksm ? MADV_MERGE : MADV_MERGEABLE))
		r.err = errno;
	r.usec = (uint32_t)((now_s() - t) * 1e6);
	if (write(done, &r, sizeof(r)) != sizeof(r))
		_exit(1);
	while (read(hold, &c, 1) > 0) /* stay alive (and mapped) until the parent closes hold */
		;
	_exit(0);
}

static int collect(int done, int procs, const char *phase, double *max_usec, double *sum_usec)
{
	struct report r;
	int got = 0, errors = 0;
	double t0 = now_s(), next = t0 + 2;

	while (got < procs) {
		ssize_t n = read(done, &r, sizeof(r));

		if (n != sizeof(r))
			die("reading child reports");
		got++;
		if (r.err) {
			if (!errors)
				fprintf(stderr, "  %s: a process failed: %s\n", phase, strerror(r.err));
			errors++;
		}
		if (max_usec && r.usec > *max_usec)
			*max_usec = r.usec;
		if (sum_usec)
			*sum_usec += r.usec;
		if (now_s() >= next) {
			fprintf(stderr, "  %s: %d/%d processes\n", phase, got, procs);
			next = now_s() + 2;
		}
	}
	return errors;
}

static void release(int fd, int procs)
{
	char buf[4096];

	memset(buf, 'g', sizeof(buf));
	while (procs > 0) {
		int n = procs < (int)sizeof(buf) ? procs : (int)sizeof(buf);

		if (write(fd, buf, n) != n)
			die("releasing children");
		procs -= n;
	}
}

static int cmd_libc(int procs, int use_sksm, long pages_to_scan, long sleep_ms, double cap_s, double target_fraction)
{
	int go_cow[2], go_merge[2], done[2], hold[2], i, errors = 0;
	long before, baseline, after_cow, after_merge;
	double t0, t_spawn, t_cow, t_merge = 0, max_usec = 0, sum_usec = 0;
	pid_t *pids = calloc(procs, sizeof(pid_t));

	if (pipe(go_cow) || pipe(go_merge) || pipe(done) || pipe(hold))
		die("pipe");
	before = vmstat("nr_anon_pages");
	fprintf(stderr, "  starting %d processes (%s)\n", procs, use_sksm ? "SKSM" : "KSM");
	t0 = now_s();
	for (i = 0; i < procs; i++) {
		pids[i] = fork();
		if (pids[i] < 0)
			die("fork");
		if (pids[i] == 0) {
			close(go_cow[1]);
			close(go_merge[1]);
			close(done[0]);
			close(hold[1]);
			child_main(go_cow[0], go_merge[0], done[1], hold[0], use_sksm);
		}
	}
	close(go_cow[0]);
	close(go_merge[0]);
	close(done[1]);
	close(hold[0]);
	errors += collect(done[0], procs, "start", NULL, NULL);
	t_spawn = now_s() - t0;
	usleep(200 * 1000);
	baseline = vmstat("nr_anon_pages");
	fprintf(stderr, "  baseline nr_anon_pages %ld (%d processes up in %.1f s)\n", baseline, procs, t_spawn);

	t0 = now_s();
	release(go_cow[1], procs);
	errors += collect(done[0], procs, "COW", NULL, NULL);
	t_cow = now_s() - t0;
	after_cow = vmstat("nr_anon_pages");
	fprintf(stderr, "  after COW   nr_anon_pages %ld (+%ld, %.1f s)\n", after_cow, after_cow - baseline, t_cow);

	printf("{\"mode\":\"%s\",\"procs\":%d,\"pageSize\":%ld,\"beforeProcs\":%ld,\"baseline\":%ld,\"afterCow\":%ld,",
	       use_sksm ? "sksm" : "ksm", procs, page_size, before, baseline, after_cow);
	t0 = now_s();
	if (use_sksm) {
		release(go_merge[1], procs);
		errors += collect(done[0], procs, "MADV_MERGE", &max_usec, &sum_usec);
		t_merge = now_s() - t0;
		after_merge = vmstat("nr_anon_pages");
		fprintf(stderr, "  after MADV_MERGE nr_anon_pages %ld (%.1f s for %d processes)\n", after_merge, t_merge, procs);
		printf("\"mergeSeconds\":%.3f,\"maxMadviseMs\":%.3f,\"meanMadviseMs\":%.3f,", t_merge, max_usec / 1e3,
		       sum_usec / 1e3 / procs);
	} else {
		struct ksm_knobs saved;
		long target = after_cow - (long)((after_cow - baseline) * target_fraction);
		double reached_s;

		release(go_merge[1], procs);
		errors += collect(done[0], procs, "MADV_MERGEABLE", NULL, NULL);
		fprintf(stderr, "  ksmd pages_to_scan=%ld sleep_millisecs=%ld, until %ld pages are freed or %.0f s\n",
			pages_to_scan, sleep_ms, after_cow - target, cap_s);
		saved = ksm_start(pages_to_scan, sleep_ms);
		t0 = now_s();
		reached_s = ksm_wait(after_cow, target, cap_s, t0, &after_merge);
		printf("\"pagesToScan\":%ld,\"sleepMillisecs\":%ld,\"capSeconds\":%.0f,\"targetFreed\":%ld,\"secondsToTarget\":%.2f,"
		       "\"elapsedSeconds\":%.2f,\"fullScans\":%ld,",
		       pages_to_scan, sleep_ms, cap_s, after_cow - target, reached_s, now_s() - t0, ksm_read("full_scans"));
		ksm_restore(saved);
	}
	printf("\"afterMerge\":%ld,\"spawnSeconds\":%.3f,\"cowSeconds\":%.3f,\"errors\":%d}\n", after_merge, t_spawn, t_cow, errors);
	fflush(stdout);
	close(hold[1]);
	for (i = 0; i < procs; i++)
		waitpid(pids[i], NULL, 0);
	free(pids);
	return errors ? 1 : 0;
}

/* ---- bulk: time to savings for MiB of duplicates ------------------------------------------ */

static char *map_pattern(size_t len, uint64_t seed)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	size_t off;

	if (p == MAP_FAILED)
		die("mmap");
	madvise(p, len, MADV_NOHUGEPAGE);
	for (off = 0; off < len; off += page_size) {
		uint64_t *w = (uint64_t *)(p + off);

		/* distinct per page (and never zero), identical between the two copies */
		w[0] = seed;
		w[1] = off / page_size + 1;
		w[page_size / 8 - 1] = ~seed;
	}
	return p;
}

static int cmd_bulk(long mib, int use_sksm, long pages_to_scan, long sleep_ms, double cap_s)
{
	size_t len = (size_t)mib << 20;
	long pages = len / page_size, before, after_fill, after;
	uint64_t seed = ((uint64_t)getpid() << 32) ^ (uint64_t)(now_s() * 1e6);
	double t0, t_index = 0, t_dedup = 0;
	char *a, *b;

	before = vmstat("nr_anon_pages");
	t0 = now_s();
	a = map_pattern(len, seed);
	b = map_pattern(len, seed);
	after_fill = vmstat("nr_anon_pages");
	fprintf(stderr, "  %ld MiB twice (%ld pages each) filled in %.1f s; nr_anon_pages +%ld\n", mib, pages, now_s() - t0,
		after_fill - before);
	printf("{\"mode\":\"%s\",\"mib\":%ld,\"pages\":%ld,\"pageSize\":%ld,\"beforeFill\":%ld,\"afterFill\":%ld,", use_sksm ? "sksm" : "ksm",
	       mib, pages, page_size, before, after_fill);
	if (use_sksm) {
		t0 = now_s();
		if (madvise(a, len, MADV_MERGE))
			die("madvise(MADV_MERGE) first copy");
		t_index = now_s() - t0;
		fprintf(stderr, "  MADV_MERGE first copy (nothing to merge with): %.2f s\n", t_index);
		t0 = now_s();
		if (madvise(b, len, MADV_MERGE))
			die("madvise(MADV_MERGE) second copy");
		t_dedup = now_s() - t0;
		after = vmstat("nr_anon_pages");
		fprintf(stderr, "  MADV_MERGE second copy (every page a duplicate): %.2f s, freed %ld pages\n", t_dedup, after_fill - after);
		printf("\"indexSeconds\":%.4f,\"dedupSeconds\":%.4f,\"secondsToTarget\":%.4f,", t_index, t_dedup, t_index + t_dedup);
	} else {
		struct ksm_knobs saved;
		double reached_s;

		if (madvise(a, len, MADV_MERGEABLE) || madvise(b, len, MADV_MERGEABLE))
			die("madvise(MADV_MERGEABLE)");
		fprintf(stderr, "  ksmd pages_to_scan=%ld sleep_millisecs=%ld, until %ld pages are freed or %.0f s\n", pages_to_scan,
			sleep_ms, (long)(pages * 0.99), cap_s);
		saved = ksm_start(pages_to_scan, sleep_ms);
		t0 = now_s();
		reached_s = ksm_wait(after_fill, after_fill - (long)(pages * 0.99), cap_s, t0, &after);
		printf("\"pagesToScan\":%ld,\"sleepMillisecs\":%ld,\"capSeconds\":%.0f,\"secondsToTarget\":%.2f,\"elapsedSeconds\":%.2f,",
		       pages_to_scan, sleep_ms, cap_s, reached_s, now_s() - t0);
		ksm_restore(saved);
	}
	printf("\"afterMerge\":%ld,\"freed\":%ld}\n", after, after_fill - after);
	fflush(stdout);
	munmap(a, len);
	munmap(b, len);
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: sksm_demo libc <procs> sksm|ksm [--pages-to-scan N] [--sleep-ms N] [--cap-s S] [--target-fraction F]\n"
			"       sksm_demo bulk <MiB> sksm|ksm [--pages-to-scan N] [--sleep-ms N] [--cap-s S]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	long pages_to_scan = 100, sleep_ms = 20;
	double cap_s = 180, target_fraction = 0.95;
	int i, use_sksm;

	page_size = sysconf(_SC_PAGESIZE);
	if (argc < 4)
		usage();
	use_sksm = !strcmp(argv[3], "sksm");
	if (!use_sksm && strcmp(argv[3], "ksm"))
		usage();
	for (i = 4; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--pages-to-scan"))
			pages_to_scan = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--sleep-ms"))
			sleep_ms = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--cap-s"))
			cap_s = atof(argv[i + 1]);
		else if (!strcmp(argv[i], "--target-fraction"))
			target_fraction = atof(argv[i + 1]);
		else
			usage();
	}
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	if (!strcmp(argv[1], "libc"))
		return cmd_libc(atoi(argv[2]), use_sksm, pages_to_scan, sleep_ms, cap_s, target_fraction);
	if (!strcmp(argv[1], "bulk"))
		return cmd_bulk(atol(argv[2]), use_sksm, pages_to_scan, sleep_ms, cap_s);
	usage();
	return 2;
}
