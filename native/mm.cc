// mmap family: mmap, munmap, mprotect, madvise, mremap, memfd_create, plus the zero-copy
// ArrayBuffer view of a mapping. lib/region.ts owns every mapping and validates everything.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include "addon.h"
#include "compat.h"

namespace memdedup {
namespace {

Napi::Value PointerResult(Napi::Env env, void* p) {
  if (p == MAP_FAILED) return Napi::Number::New(env, -errno);
  return Napi::Number::New(env, static_cast<double>(reinterpret_cast<uintptr_t>(p)));
}

// mmap(hint, length, prot, flags, fd, offset) -> address | -errno
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(hint, ArgU64(info, 0));
  MEMDEDUP_ARG(length, ArgU64(info, 1));
  MEMDEDUP_ARG(prot, ArgInt(info, 2));
  MEMDEDUP_ARG(flags, ArgInt(info, 3));
  MEMDEDUP_ARG(fd, ArgInt(info, 4, -1));
  MEMDEDUP_ARG(offset, ArgU64(info, 5));
  return PointerResult(info.Env(), mmap(reinterpret_cast<void*>(hint), length, prot, flags, fd, static_cast<off_t>(offset)));
}

Napi::Value Munmap(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(address, ArgU64(info, 0));
  MEMDEDUP_ARG(length, ArgU64(info, 1));
  return Result(info.Env(), munmap(reinterpret_cast<void*>(address), length));
}

Napi::Value Mprotect(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(address, ArgU64(info, 0));
  MEMDEDUP_ARG(length, ArgU64(info, 1));
  MEMDEDUP_ARG(prot, ArgInt(info, 2));
  return Result(info.Env(), mprotect(reinterpret_cast<void*>(address), length, prot));
}

Napi::Value Madvise(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(address, ArgU64(info, 0));
  MEMDEDUP_ARG(length, ArgU64(info, 1));
  MEMDEDUP_ARG(advice, ArgInt(info, 2));
  return Result(info.Env(), madvise(reinterpret_cast<void*>(address), length, advice));
}

// mremap(oldAddress, oldLength, newLength, flags, newAddress) -> address | -errno
Napi::Value Mremap(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(address, ArgU64(info, 0));
  MEMDEDUP_ARG(old_length, ArgU64(info, 1));
  MEMDEDUP_ARG(new_length, ArgU64(info, 2));
  MEMDEDUP_ARG(flags, ArgInt(info, 3));
  MEMDEDUP_ARG(new_address, ArgU64(info, 4));
  return PointerResult(info.Env(), mremap(reinterpret_cast<void*>(address), old_length, new_length, flags,
                                          reinterpret_cast<void*>(new_address)));
}

// Placement inside a reservation (lib/region.ts Reservation). The target is re-checked here, on
// the exact numbers the syscall gets: page-aligned, non-empty and wholly inside
// [within, within + withinLength), which lib/ passes as the reservation's own range. MAP_FIXED /
// MREMAP_FIXED are added here, never taken from the caller, so no argument can aim them elsewhere.
bool InsideReservation(const Napi::CallbackInfo& info, size_t i, uint64_t address, uint64_t length, uint64_t within,
                       uint64_t within_length) {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (length == 0 || address % page != 0 || length % page != 0 || within % page != 0 || address < within ||
      length > within_length || address - within > within_length - length) {
    ThrowArgument(info, i, true, "a non-empty page-aligned range inside the reservation");
    return false;
  }
  return true;
}

// mmapFixed(within, withinLength, address, length, prot, flags, fd, offset) -> address | -errno
Napi::Value MmapFixed(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(within, ArgU64(info, 0));
  MEMDEDUP_ARG(within_length, ArgU64(info, 1));
  MEMDEDUP_ARG(address, ArgU64(info, 2));
  MEMDEDUP_ARG(length, ArgU64(info, 3));
  MEMDEDUP_ARG(prot, ArgInt(info, 4));
  MEMDEDUP_ARG(flags, ArgInt(info, 5));
  MEMDEDUP_ARG(fd, ArgInt(info, 6, -1));
  MEMDEDUP_ARG(offset, ArgU64(info, 7));
  if (!InsideReservation(info, 2, address, length, within, within_length)) return info.Env().Undefined();
  int fixed = (flags & ~MAP_FIXED_NOREPLACE) | MAP_FIXED;
  return PointerResult(info.Env(), mmap(reinterpret_cast<void*>(address), length, prot, fixed, fd, static_cast<off_t>(offset)));
}

// mremapFixed(oldAddress, oldLength, newLength, flags, newAddress, within, withinLength) -> address | -errno
// Moves into [newAddress, newAddress + newLength), which must lie inside the reservation.
Napi::Value MremapFixed(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(address, ArgU64(info, 0));
  MEMDEDUP_ARG(old_length, ArgU64(info, 1));
  MEMDEDUP_ARG(new_length, ArgU64(info, 2));
  MEMDEDUP_ARG(flags, ArgInt(info, 3));
  MEMDEDUP_ARG(new_address, ArgU64(info, 4));
  MEMDEDUP_ARG(within, ArgU64(info, 5));
  MEMDEDUP_ARG(within_length, ArgU64(info, 6));
  if (!InsideReservation(info, 4, new_address, new_length, within, within_length)) return info.Env().Undefined();
  return PointerResult(info.Env(), mremap(reinterpret_cast<void*>(address), old_length, new_length,
                                          flags | MREMAP_MAYMOVE | MREMAP_FIXED, reinterpret_cast<void*>(new_address)));
}

// The ArrayBuffer does not own the memory: when the Region's memory goes away, lib/region/views.ts
// puts zero-filled memory in its place and unmaps the range only once the ArrayBuffer itself is
// garbage-collected, so a late user (JS, or native code in the thread pool) finds memory there;
// only protect() detaches it (a write would fault).
Napi::Value Wrap(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(address, ArgU64(info, 0));
  MEMDEDUP_ARG(length, ArgU64(info, 1));
  return Napi::ArrayBuffer::New(info.Env(), reinterpret_cast<void*>(address), length);
}

Napi::Value Detach(const Napi::CallbackInfo& info) {
  if (!info[0].IsArrayBuffer()) {
    ThrowArgument(info, 0, false, "an ArrayBuffer");
    return info.Env().Undefined();
  }
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  if (!buffer.IsDetached()) buffer.Detach();
  return info.Env().Undefined();
}

// readMemory(address, length, into: Uint8Array) -> bytes | -errno
// Copies through the kernel (/proc/self/mem, process_vm_readv where that cannot be opened): a
// page that cannot be read (a file truncated under its mapping) is EFAULT, never a SIGBUS here.
Napi::Value ReadMemory(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(address, ArgU64(info, 0));
  MEMDEDUP_ARG(length, ArgU64(info, 1));
  MEMDEDUP_ARG(into, ArgTypedArray<uint8_t>(info, 2, length));
  return Result(info.Env(), ReadOwnMemory(into.data, address, length));
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(name, ArgString(info, 0));
  MEMDEDUP_ARG(flags, ArgInt(info, 1));
  return Result(info.Env(), memfd_create(name.c_str(), static_cast<unsigned>(flags)));
}

Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(length, ArgU64(info, 1));
  return Result(info.Env(), ftruncate(fd, static_cast<off_t>(length)));
}

// fcntl(F_ADD_SEALS): a memfd Region seals F_SEAL_SHRINK so no one can cut pages from under it.
Napi::Value AddSeals(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(seals, ArgInt(info, 1, 0));
  return Result(info.Env(), fcntl(fd, F_ADD_SEALS, seals));
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  return Result(info.Env(), close(fd));
}

}  // namespace

long ReadOwnMemory(void* dst, uintptr_t address, size_t length) {
  // /proc/self/mem first: it reads with a plain GUP reference. process_vm_readv pins the pages
  // (FOLL_PIN), and GUP unshares a KSM or COW-shared anonymous page before pinning it: reading a
  // merged Region that way would unmerge every page it reads (test/kselftest/ksm_mremap_rmap).
  // Opened per call, not cached: a library call leaves no descriptor behind (and a cached one
  // would race between worker threads). -1: cannot be opened, use process_vm_readv.
  const int proc_mem = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
  struct CloseOnReturn {
    int fd;
    ~CloseOnReturn() {
      if (fd >= 0) close(fd);
    }
  } closer{proc_mem};
  size_t done = 0;
  while (done < length) {
    ssize_t n;
    if (proc_mem >= 0) {
      n = pread(proc_mem, static_cast<char*>(dst) + done, length - done, static_cast<off_t>(address + done));
    } else {
      struct iovec local = {static_cast<char*>(dst) + done, length - done};
      struct iovec remote = {reinterpret_cast<void*>(address + done), length - done};
      n = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EIO && proc_mem >= 0) errno = EFAULT;  // /proc/self/mem: nothing readable there
      return -1;
    }
    if (n == 0) {
      errno = EFAULT;
      return -1;
    }
    done += static_cast<size_t>(n);
  }
  return static_cast<long>(done);
}

void InitMm(Napi::Env env, Napi::Object exports) {
  Export<Mmap>(exports, "mmap");
  Export<Munmap>(exports, "munmap");
  Export<Mprotect>(exports, "mprotect");
  Export<Madvise>(exports, "madvise");
  Export<Mremap>(exports, "mremap");
  Export<MmapFixed>(exports, "mmapFixed");
  Export<MremapFixed>(exports, "mremapFixed");
  Export<Wrap>(exports, "wrap");
  Export<Detach>(exports, "detach");
  Export<ReadMemory>(exports, "readMemory");
  Export<AddSeals>(exports, "addSeals");
  Export<MemfdCreate>(exports, "memfdCreate");
  Export<Ftruncate>(exports, "ftruncate");
  Export<CloseFd>(exports, "closeFd");

  Napi::Object c = Napi::Object::New(env);
  SetConst(c, "pageSize", static_cast<double>(sysconf(_SC_PAGESIZE)));
  SetConst(c, "PROT_NONE", PROT_NONE);
  SetConst(c, "PROT_READ", PROT_READ);
  SetConst(c, "PROT_WRITE", PROT_WRITE);
  SetConst(c, "PROT_EXEC", PROT_EXEC);
  SetConst(c, "MAP_SHARED", MAP_SHARED);
  SetConst(c, "MAP_PRIVATE", MAP_PRIVATE);
  SetConst(c, "MAP_ANONYMOUS", MAP_ANONYMOUS);
  SetConst(c, "MAP_NORESERVE", MAP_NORESERVE);
  SetConst(c, "MAP_POPULATE", MAP_POPULATE);
  SetConst(c, "MAP_HUGETLB", MAP_HUGETLB);
  SetConst(c, "MAP_FIXED", MAP_FIXED);
  SetConst(c, "MAP_FIXED_NOREPLACE", MAP_FIXED_NOREPLACE);
  SetConst(c, "MREMAP_MAYMOVE", MREMAP_MAYMOVE);
  SetConst(c, "MREMAP_FIXED", MREMAP_FIXED);
  SetConst(c, "MREMAP_DONTUNMAP", MREMAP_DONTUNMAP);
  SetConst(c, "MFD_CLOEXEC", MFD_CLOEXEC);
  SetConst(c, "MFD_ALLOW_SEALING", MFD_ALLOW_SEALING);
  SetConst(c, "MFD_HUGETLB", MFD_HUGETLB);
  SetConst(c, "F_SEAL_SHRINK", F_SEAL_SHRINK);
  SetConst(c, "F_SEAL_GROW", F_SEAL_GROW);
  SetConst(c, "O_PATH", O_PATH);
  SetConst(c, "O_NONBLOCK", O_NONBLOCK);
  SetConst(c, "MADV_NORMAL", MADV_NORMAL);
  SetConst(c, "MADV_RANDOM", MADV_RANDOM);
  SetConst(c, "MADV_SEQUENTIAL", MADV_SEQUENTIAL);
  SetConst(c, "MADV_WILLNEED", MADV_WILLNEED);
  SetConst(c, "MADV_DONTNEED", MADV_DONTNEED);
  SetConst(c, "MADV_FREE", MADV_FREE);
  SetConst(c, "MADV_REMOVE", MADV_REMOVE);
  SetConst(c, "MADV_DONTFORK", MADV_DONTFORK);
  SetConst(c, "MADV_DOFORK", MADV_DOFORK);
  SetConst(c, "MADV_MERGEABLE", MADV_MERGEABLE);
  SetConst(c, "MADV_UNMERGEABLE", MADV_UNMERGEABLE);
  SetConst(c, "MADV_HUGEPAGE", MADV_HUGEPAGE);
  SetConst(c, "MADV_NOHUGEPAGE", MADV_NOHUGEPAGE);
  SetConst(c, "MADV_DONTDUMP", MADV_DONTDUMP);
  SetConst(c, "MADV_DODUMP", MADV_DODUMP);
  SetConst(c, "MADV_WIPEONFORK", MADV_WIPEONFORK);
  SetConst(c, "MADV_KEEPONFORK", MADV_KEEPONFORK);
  SetConst(c, "MADV_COLD", MADV_COLD);
  SetConst(c, "MADV_PAGEOUT", MADV_PAGEOUT);
  SetConst(c, "MADV_POPULATE_READ", MADV_POPULATE_READ);
  SetConst(c, "MADV_POPULATE_WRITE", MADV_POPULATE_WRITE);
  SetConst(c, "MADV_COLLAPSE", MADV_COLLAPSE);
  SetConst(c, "MADV_MERGE", MADV_MERGE);
  exports.Set("constants", c);
}

}  // namespace memdedup
