// remote family: another process, by pidfd. pidfd_open, its /proc/<pid> directory (files opened
// relative to it, so a recycled pid cannot redirect them), poll for exit, pread of /proc/<pid>/mem
// into a caller's Uint8Array, and process_madvise. PAGEMAP_SCAN on its pagemap is pagemap.cc's.
#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "addon.h"
#include "compat.h"
#include "xxh64.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif

namespace memdedup {
namespace {

// The kernel's UIO_MAXIOV: process_madvise takes at most this many ranges per call.
constexpr uint64_t kMaxRanges = 1024;

// remotePidfdOpen(pid) -> pidfd | -errno (pidfd_open sets O_CLOEXEC itself).
Napi::Value RemotePidfdOpen(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(pid, ArgInt(info, 0, 1));
  return Result(info.Env(), syscall(SYS_pidfd_open, pid, 0));
}

// remoteOpenProcDir(pid) -> fd of /proc/<pid> (O_PATH | O_DIRECTORY) | -errno.
Napi::Value RemoteOpenProcDir(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(pid, ArgInt(info, 0, 1));
  std::string path = "/proc/" + std::to_string(pid);
  return Result(info.Env(), open(path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
}

// remoteOpenAt(dirfd, name, write) -> fd | -errno: a file of the /proc/<pid> directory, read-only
// (write 0) or write-only (write 1). `name` is one plain file name: no '/', '.' or '..'.
Napi::Value RemoteOpenAt(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(dirfd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(name, ArgString(info, 1));
  MEMDEDUP_ARG(write, ArgInt(info, 2, 0, 1));
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
    ThrowArgument(info, 1, false, "a file name in /proc/<pid> (no '/')");
    return info.Env().Undefined();
  }
  int flags = (write ? O_WRONLY : O_RDONLY) | O_CLOEXEC | O_NOCTTY;
  return Result(info.Env(), openat(dirfd, name.c_str(), flags));
}

// remotePidfdExited(pidfd) -> 1 (the process exited: the pidfd is readable) | 0 | -errno.
Napi::Value RemotePidfdExited(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  struct pollfd p = {fd, POLLIN, 0};
  int rc;
  do rc = poll(&p, 1, 0);
  while (rc < 0 && errno == EINTR);
  if (rc < 0) return Napi::Number::New(info.Env(), -errno);
  if (p.revents & POLLNVAL) return Napi::Number::New(info.Env(), -EBADF);
  return Napi::Number::New(info.Env(), (p.revents & (POLLIN | POLLHUP)) ? 1 : 0);
}

// remoteRead(memFd, address, into: Uint8Array) -> bytes read | -errno: pread of /proc/<pid>/mem
// at `address` into the whole of `into` (re-checked here: a Uint8Array, its data pointer and
// length now). Stops at the first unreadable byte: the bytes before it, or -EIO when none.
Napi::Value RemoteRead(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(address, ArgU64(info, 1));
  MEMDEDUP_ARG(into, ArgTypedArray<uint8_t>(info, 2, 1));
  size_t done = 0;
  while (done < into.length) {
    ssize_t n = pread(fd, into.data + done, into.length - done, static_cast<off_t>(address + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (done > 0) break;
      return Napi::Number::New(info.Env(), -errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return Napi::Number::New(info.Env(), static_cast<double>(done));
}

// Pages of the target read through /proc/<pid>/mem per pread in remoteHashPages.
constexpr size_t kRemoteHashBatch = 64;

// remoteHashPages(memFd, address, count, out: BigUint64Array) -> count | -errno: the XXH64 of each
// of `count` consecutive pages of the target from `address` (HashPage, the Deduplicator's hash),
// copied through the kernel in batches: no page pinned or unshared, so a KSM page stays merged.
// out is re-checked here (count elements); a page that cannot be read is -errno (EIO), and out
// may then hold the hashes of the pages before it.
Napi::Value RemoteHashPages(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(address, ArgU64(info, 1));
  MEMDEDUP_ARG(count, ArgU64(info, 2, 1u << 30));
  MEMDEDUP_ARG(out, ArgTypedArray<uint64_t>(info, 3, count));
  const size_t page_size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (address % page_size != 0) {
    ThrowArgument(info, 1, true, "a multiple of the page size");
    return info.Env().Undefined();
  }
  std::vector<unsigned char> copy(kRemoteHashBatch * page_size);
  for (uint64_t i = 0; i < count;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kRemoteHashBatch, count - i));
    size_t done = 0;
    while (done < n * page_size) {
      ssize_t got = pread(fd, copy.data() + done, n * page_size - done, static_cast<off_t>(address + i * page_size + done));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) return Napi::Number::New(info.Env(), -errno);
      if (got == 0) return Napi::Number::New(info.Env(), -EIO);
      done += static_cast<size_t>(got);
    }
    for (size_t k = 0; k < n; k++) out.data[i + k] = HashPage(copy.data() + k * page_size, page_size);
    i += n;
  }
  return Napi::Number::New(info.Env(), static_cast<double>(count));
}

// Advice that keeps what memory reads: a pidfd of this very process would make process_madvise a
// madvise() of any address here, so nothing that drops or zeroes pages (DONTNEED, FREE, …) passes.
bool KeepsContent(int advice) {
  switch (advice) {
    case MADV_COLD: case MADV_PAGEOUT: case MADV_WILLNEED: case MADV_COLLAPSE: case MADV_MERGE: case MADV_UNMERGEABLE:
      return true;
    default:
      return false;
  }
}

// remoteMadvise(pidfd, ranges: BigUint64Array, count, advice) -> bytes advised | -errno:
// process_madvise(pidfd, iov, count, advice, 0). ranges holds count (start, length) pairs, copied
// into an iovec array owned here; count <= UIO_MAXIOV; advice one that KeepsContent().
Napi::Value RemoteMadvise(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(pidfd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(count, ArgU64(info, 2, kMaxRanges));
  MEMDEDUP_ARG(ranges, ArgTypedArray<uint64_t>(info, 1, count * 2));
  MEMDEDUP_ARG(advice, ArgInt(info, 3));
  if (!KeepsContent(advice)) {
    ThrowArgument(info, 3, false, "advice that keeps what memory reads (MADV_COLD, PAGEOUT, WILLNEED, COLLAPSE, MERGE, UNMERGEABLE)");
    return info.Env().Undefined();
  }
  std::vector<struct iovec> iov(count);
  for (size_t i = 0; i < count; i++) {
    iov[i].iov_base = reinterpret_cast<void*>(static_cast<uintptr_t>(ranges.data[2 * i]));
    iov[i].iov_len = static_cast<size_t>(ranges.data[2 * i + 1]);
  }
  return Result(info.Env(), syscall(SYS_process_madvise, pidfd, count ? iov.data() : nullptr, count, advice, 0));
}

}  // namespace

void InitRemote(Napi::Env env, Napi::Object exports) {
  Export<RemotePidfdOpen>(exports, "remotePidfdOpen");
  Export<RemoteOpenProcDir>(exports, "remoteOpenProcDir");
  Export<RemoteOpenAt>(exports, "remoteOpenAt");
  Export<RemotePidfdExited>(exports, "remotePidfdExited");
  Export<RemoteRead>(exports, "remoteRead");
  Export<RemoteHashPages>(exports, "remoteHashPages");
  Export<RemoteMadvise>(exports, "remoteMadvise");
  Napi::Object c = Napi::Object::New(env);
  SetConst(c, "MAX_RANGES", static_cast<double>(kMaxRanges));
  exports.Set("remoteConstants", c);
}

}  // namespace memdedup
