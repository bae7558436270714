// Runs a program with KSM on for its whole process (PR_SET_MEMORY_MERGE, kept across execve since
// Linux 6.7), as systemd's MemoryKSM= or `memdedup run` do, but keeping every inherited fd: the
// fleet bench's plain workers are forked through it and still talk to the parent over fd 3.
//   ksm_exec <program> [args...]
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>
#include "../../native/compat.h"  // PR_SET_MEMORY_MERGE: one definition for C and the addon
#include "bench.h"

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: ksm_exec <program> [args...]\n");
    return 2;
  }
  if (prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0)) die("prctl(PR_SET_MEMORY_MERGE)");
  execvp(argv[1], argv + 1);
  die(argv[1]);
}
