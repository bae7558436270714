// memdedup: msharefs checks on the lab kernel (run as root in the guest).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/msharefs.h>

#ifndef MADV_MERGE
#define MADV_MERGE 26
#endif

static int failures;
#define CHECK(cond, ...) do { if (cond) { printf("ok   "); printf(__VA_ARGS__); printf("\n"); } \
	else { failures++; printf("FAIL "); printf(__VA_ARGS__); printf(" (errno %d %s)\n", errno, strerror(errno)); } fflush(stdout); } while (0)

static unsigned long align;
static const char *dir = "/sys/fs/mshare";

static long vmpte_kb(void)
{
	char line[256]; long v = -1;
	FILE *f = fopen("/proc/self/status", "r");
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmPTE: %ld kB", &v) == 1) break;
	if (f) fclose(f);
	return v;
}

static uint64_t pfn_of(void *p)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	pread(fd, &e, 8, ((uintptr_t)p / 4096) * 8);
	close(fd);
	return (e & (1ULL << 63)) ? (e & ((1ULL << 55) - 1)) : 0;
}

static int create_region(const char *name, unsigned long map_size, int memfd)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	unlink(path);
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (fd < 0) return -1;
	if (ftruncate(fd, align)) return -1;
	struct mshare_create mc = { .region_offset = 0, .size = map_size, .offset = 0,
		.prot = PROT_READ | PROT_WRITE,
		.flags = (memfd >= 0 ? 0 : MAP_ANONYMOUS) | MAP_SHARED | MAP_FIXED,
		.fd = memfd >= 0 ? (unsigned)memfd : (unsigned)-1 };
	if (ioctl(fd, MSHAREFS_CREATE_MAPPING, &mc)) return -1;
	return fd;
}

static int run_child(void (*fn)(void *), void *arg)
{
	pid_t pid = fork();
	if (pid == 0) { fn(arg); _exit(0); }
	int st; waitpid(pid, &st, 0);
	return st;
}

struct attach { const char *path; unsigned long off; char val; };
static void child_write(void *a)
{
	struct attach *x = a;
	int fd = open(x->path, O_RDWR);
	if (fd < 0) _exit(2);
	char *p = mmap(NULL, align, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) _exit(3);
	if (p[0] != 'A') _exit(4);      /* sees the creator's write */
	p[x->off] = x->val;
	_exit(0);
}

static sigjmp_buf jb;
static void on_segv(int s) { siglongjmp(jb, s); }

int main(int argc, char **argv)
{
	char path[256];
	mkdir(dir, 0755);
	if (mount("msharefs", dir, "msharefs", 0, NULL) && errno != EBUSY) {
		printf("SKIP msharefs mount: %s\n", strerror(errno));
		return 4;
	}
	FILE *f = fopen("/sys/fs/mshare/mshare_info", "r");
	CHECK(f && fscanf(f, "%lu", &align) == 1 && align, "mshare_info reads %lu", align);
	if (f) fclose(f);

	/* --- bad inputs --- */
	snprintf(path, sizeof(path), "%s/bad", dir);
	unlink(path);
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
	CHECK(fd >= 0, "create region file");
	struct mshare_create mc = { 0, 4096, 0, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_SHARED | MAP_FIXED, (unsigned)-1 };
	CHECK(ioctl(fd, MSHAREFS_CREATE_MAPPING, &mc) == -1 && errno == EINVAL, "CREATE_MAPPING before size: EINVAL");
	CHECK(mmap(NULL, align, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED && errno == EINVAL, "mmap before size: EINVAL");
	CHECK(ftruncate(fd, align + 4096) == -1 && errno == EINVAL, "misaligned ftruncate: EINVAL");
	CHECK(ftruncate(fd, align) == 0, "ftruncate(align)");
	CHECK(ftruncate(fd, 2 * align) == -1 && errno == EINVAL, "second ftruncate: EINVAL");
	mc.region_offset = align;
	CHECK(ioctl(fd, MSHAREFS_CREATE_MAPPING, &mc) == -1 && errno == EINVAL, "CREATE_MAPPING past the end: EINVAL");
	mc.region_offset = align - 4096; mc.size = 8192;
	CHECK(ioctl(fd, MSHAREFS_CREATE_MAPPING, &mc) == -1 && errno == EINVAL, "CREATE_MAPPING straddling the end: EINVAL");
	mc.region_offset = 0; mc.size = 4096; mc.flags = MAP_ANONYMOUS | MAP_SHARED;
	CHECK(ioctl(fd, MSHAREFS_CREATE_MAPPING, &mc) == -1 && errno == EINVAL, "CREATE_MAPPING without MAP_FIXED: EINVAL");
	mc.flags = MAP_ANONYMOUS | MAP_PRIVATE | MAP_FIXED;
	CHECK(ioctl(fd, MSHAREFS_CREATE_MAPPING, &mc) == -1 && errno == EINVAL, "CREATE_MAPPING MAP_PRIVATE: EINVAL");
	mc.flags = MAP_SHARED | MAP_FIXED; mc.fd = 9999;
	CHECK(ioctl(fd, MSHAREFS_CREATE_MAPPING, &mc) == -1 && errno == EBADF, "CREATE_MAPPING bad fd: EBADF");
	mc.fd = fd;
	CHECK(ioctl(fd, MSHAREFS_CREATE_MAPPING, &mc) == -1 && errno == EINVAL, "CREATE_MAPPING of an msharefs file: EINVAL");
	CHECK(ioctl(fd, _IOW('x', 7, int), 0) == -1 && errno == ENOTTY, "unknown ioctl: ENOTTY");
	CHECK(ioctl(fd, MSHAREFS_CREATE_MAPPING, (void *)8) == -1 && errno == EFAULT, "CREATE_MAPPING bad pointer: EFAULT");
	struct mshare_unmap mu = { align, 4096 };
	CHECK(ioctl(fd, MSHAREFS_UNMAP, &mu) == -1 && errno == EINVAL, "UNMAP past the end: EINVAL");
	CHECK(mmap(NULL, align / 2, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED && errno == EINVAL, "mmap of the wrong size: EINVAL");
	CHECK(mmap(NULL, align, PROT_READ, MAP_PRIVATE, fd, 0) == MAP_FAILED && errno == EINVAL, "mmap MAP_PRIVATE: EINVAL");
	CHECK(mmap((void *)(align + 4096), align, PROT_READ, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED && errno == EINVAL, "mmap MAP_FIXED misaligned: EINVAL");
	CHECK(unlink("/sys/fs/mshare/mshare_info") == -1 && errno == EPERM, "unlink mshare_info: EPERM");
	close(fd);
	CHECK(unlink(path) == 0, "unlink region");

	/* --- two processes see each other's writes --- */
	unsigned long sz = 64UL << 20;
	fd = create_region("share", sz, -1);
	CHECK(fd >= 0, "create 64 MiB anonymous region");
	char *p = mmap(NULL, align, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(p != MAP_FAILED && ((uintptr_t)p % align) == 0, "creator maps region at %p, aligned", p);
	p[0] = 'A';
	snprintf(path, sizeof(path), "%s/share", dir);
	struct attach a1 = { path, 4096, 'B' };
	int st = run_child(child_write, &a1);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "attacher sees creator's write (status %x)", st);
	CHECK(p[4096] == 'B', "creator sees attacher's write after it exited");

	/* --- page tables are shared: touching 64 MiB adds no PTE pages to this mm --- */
	long before = vmpte_kb();
	for (unsigned long i = 0; i < sz; i += 4096) p[i + 100] = 1; /* keep byte 0 of each page */
	long after = vmpte_kb();
	CHECK(after - before <= 8, "VmPTE after touching 64 MiB: %ld -> %ld kB", before, after);
	uint64_t pfn = pfn_of(p + 8192);
	CHECK(pfn != 0, "pagemap shows a PFN through the shared tables (%llx)", (unsigned long long)pfn);

	/* --- fork: the child inherits the mshare vma and the data --- */
	pid_t pid = fork();
	if (pid == 0) {
		if (p[4096] != 'B') _exit(5);
		p[8192] = 'F';
		_exit(pfn_of(p + 8192) == pfn ? 0 : 6);
	}
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && p[8192] == 'F', "forked child reads, writes, same PFN (status %x)", st);

	/* --- documented restrictions: no split, no mprotect on the mshare vma --- */
	CHECK(mprotect(p, 4096, PROT_READ) == -1, "mprotect of part of the vma refused (errno %d)", errno);
	CHECK(mprotect(p, align, PROT_READ) == -1 && errno == EINVAL, "mprotect of the whole vma: EINVAL");
	CHECK(munmap(p, 4096) == -1 && errno == EINVAL, "partial munmap: EINVAL");

	/* --- KSM / SKSM on mshare memory: refused or ignored, no oops --- */
	errno = 0;
	int r = madvise(p, align, MADV_MERGEABLE);
	printf("info MADV_MERGEABLE on the whole mshare vma: %d (errno %d)\n", r, r ? errno : 0);
	CHECK(r == 0 || errno == EINVAL, "MADV_MERGEABLE returns cleanly");
	r = madvise(p, 4096 * 16, MADV_MERGEABLE);
	printf("info MADV_MERGEABLE on part of it: %d (errno %d)\n", r, r ? errno : 0);
	CHECK(r == 0 || errno == EINVAL, "MADV_MERGEABLE on a part returns cleanly");
	r = madvise(p, 4096 * 16, MADV_MERGE);
	printf("info MADV_MERGE on it: %d (errno %d)\n", r, r ? errno : 0);
	CHECK(r == 0 || errno == EINVAL || errno == ENOMEM, "MADV_MERGE returns cleanly");
	CHECK(pfn_of(p + 8192) == pfn && p[8192] == 'F', "data and PFN unchanged after the merge attempts");
	r = madvise(p, align, MADV_UNMERGEABLE);
	CHECK(r == 0 || errno == EINVAL, "MADV_UNMERGEABLE returns cleanly (%d)", r);

	/* --- another attacher exits; creator and a second attacher stay intact --- */
	struct attach a2 = { path, 12288, 'C' };
	st = run_child(child_write, &a2);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && p[12288] == 'C' && p[4096] == 'B', "second attacher exited, data intact");

	/* --- munmap of the whole vma, then remap --- */
	CHECK(munmap(p, align) == 0, "munmap whole mshare vma");
	p = mmap(NULL, align, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(p != MAP_FAILED && p[4096] == 'B' && p[12288] == 'C', "remap sees the data again");

	/* --- MSHAREFS_UNMAP: access afterwards is SIGSEGV --- */
	mu.region_offset = 0; mu.size = sz;
	CHECK(ioctl(fd, MSHAREFS_UNMAP, &mu) == 0, "MSHAREFS_UNMAP the object");
	signal(SIGSEGV, on_segv);
	volatile int got = 0;
	if (sigsetjmp(jb, 1) == 0) { volatile char c = p[4096]; (void)c; } else got = 1;
	CHECK(got, "access after MSHAREFS_UNMAP raises SIGSEGV");
	signal(SIGSEGV, SIG_DFL);
	munmap(p, align);
	close(fd);
	CHECK(unlink(path) == 0, "unlink region");

	/* --- memfd-backed object --- */
	int mfd = memfd_create("mshare-memfd", 0);
	CHECK(mfd >= 0 && ftruncate(mfd, 1 << 20) == 0, "memfd 1 MiB");
	char *m = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	m[0] = 'M';
	fd = create_region("memfd", 1 << 20, mfd);
	CHECK(fd >= 0, "map memfd into a region");
	p = mmap(NULL, align, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(p != MAP_FAILED && p[0] == 'M', "region shows the memfd's data");
	p[1] = 'N';
	CHECK(m[1] == 'N' && pfn_of(p) == pfn_of(m), "memfd sees the region's write, same PFN");
	munmap(p, align); munmap(m, 1 << 20); close(mfd); close(fd);
	snprintf(path, sizeof(path), "%s/memfd", dir); unlink(path);

	/* --- owner exit: region is emptied; a remaining attacher gets SIGSEGV --- */
	int pipefd[2]; pipe(pipefd);
	snprintf(path, sizeof(path), "%s/owned", dir);
	pid = fork();
	if (pid == 0) {
		int ofd = create_region("owned", 1 << 20, -1);
		char *q = mmap(NULL, align, PROT_READ | PROT_WRITE, MAP_SHARED, ofd, 0);
		q[0] = 'O';
		write(pipefd[1], "x", 1);
		pause();
		_exit(0);
	}
	char c; read(pipefd[0], &c, 1);
	fd = open(path, O_RDWR);
	p = mmap(NULL, align, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(p != MAP_FAILED && p[0] == 'O', "non-owner attaches owner's region");
	kill(pid, SIGKILL); waitpid(pid, &st, 0);
	signal(SIGSEGV, on_segv);
	got = 0;
	if (sigsetjmp(jb, 1) == 0) { volatile char c2 = p[4096]; (void)c2; } else got = 1;
	signal(SIGSEGV, SIG_DFL);
	CHECK(got, "after the owner exits, access faults (SIGSEGV)");
	CHECK(mmap(NULL, align, PROT_READ, MAP_SHARED, fd, 0) == MAP_FAILED && errno == EINVAL, "new attach after owner exit: EINVAL");
	munmap(p, align); close(fd); unlink(path);

	printf("%s: %d failure(s)\n", failures ? "FAIL" : "PASS", failures);
	return failures ? 1 : 0;
}
