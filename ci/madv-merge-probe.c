// Probes madvise(MADV_MERGE = 26), the SKSM RFC's synchronous merge.
// Prints "MADV_MERGE: 0" and exits 0 where SKSM is present (the lab kernel),
// prints "MADV_MERGE: EINVAL" and exits 2 where it is not (stock kernels).
// With --expect-present or --expect-absent it exits 1 when the result differs.
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../native/compat.h"  // MADV_MERGE: one definition for C and the addon

int main(int argc, char **argv)
{
	long page = sysconf(_SC_PAGESIZE);
	size_t len = 4 * page;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	memset(p, 0x5a, len);	/* four identical pages: three can merge into one */
	int ret = madvise(p, len, MADV_MERGE);
	int err = ret ? errno : 0;
	printf("MADV_MERGE: %s\n", ret ? (err == EINVAL ? "EINVAL" : strerror(err)) : "0");
	/* Writing after the merge must COW, not corrupt the twin pages. */
	p[0] = 1;
	if (p[page] != 0x5a || p[2 * page] != 0x5a) {
		fprintf(stderr, "content changed after COW\n");
		return 1;
	}
	if (argc > 1 && strcmp(argv[1], "--expect-present") == 0)
		return ret == 0 ? 0 : 1;
	if (argc > 1 && strcmp(argv[1], "--expect-absent") == 0)
		return ret != 0 && err == EINVAL ? 0 : 1;
	return ret == 0 ? 0 : 2;
}
