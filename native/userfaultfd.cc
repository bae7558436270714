// userfaultfd family: open (syscall or /dev/userfaultfd), UFFDIO_API, UFFDIO_REGISTER,
// UFFDIO_UNREGISTER, UFFDIO_WRITEPROTECT. lib/uffd.ts decides the open order, which
// features to ask for, and only passes spans of live Regions.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "addon.h"
#include "compat.h"

namespace memdedup {
namespace {

constexpr int kOpenFlags = O_CLOEXEC | O_NONBLOCK;

// Open methods, chosen by lib/uffd.ts (policy stays in JS).
enum : int { kSyscall = 0, kSyscallUserModeOnly = 1, kDevice = 2 };

// uffdOpen(method) -> fd | -errno
Napi::Value UffdOpen(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(method, ArgInt(info, 0, kSyscall, kDevice));
  long fd;
  if (method == kDevice) {
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) return Napi::Number::New(info.Env(), -errno);
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, kOpenFlags);
    int saved = errno;
    close(dev);
    errno = saved;
  } else {
    fd = syscall(__NR_userfaultfd, kOpenFlags | (method == kSyscallUserModeOnly ? UFFD_USER_MODE_ONLY : 0));
  }
  return Result(info.Env(), fd);
}

// uffdApi(fd, features, out: BigUint64Array(2)) -> 0 | -errno
// out[0] = features the kernel offers, out[1] = ioctls available on the fd. One call per fd:
// the kernel refuses a second UFFDIO_API on an initialized context.
Napi::Value UffdApi(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(features, ArgU64(info, 1, UINT32_MAX));
  MEMDEDUP_ARG(out, ArgTypedArray<uint64_t>(info, 2, 2));
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = features;
  long rc = ioctl(fd, UFFDIO_API, &api);
  if (rc == 0) {
    out.data[0] = api.features;
    out.data[1] = api.ioctls;
  }
  return Result(info.Env(), rc);
}

// uffdRegister(fd, address, length, mode, out: BigUint64Array(1)) -> 0 | -errno
// out[0] = ioctls usable on the registered range.
Napi::Value UffdRegister(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(address, ArgU64(info, 1));
  MEMDEDUP_ARG(length, ArgU64(info, 2));
  MEMDEDUP_ARG(mode, ArgInt(info, 3, 0));
  MEMDEDUP_ARG(out, ArgTypedArray<uint64_t>(info, 4, 1));
  struct uffdio_register reg = {};
  reg.range.start = address;
  reg.range.len = length;
  reg.mode = static_cast<__u64>(mode);
  long rc = ioctl(fd, UFFDIO_REGISTER, &reg);
  if (rc == 0) out.data[0] = reg.ioctls;
  return Result(info.Env(), rc);
}

// uffdUnregister(fd, address, length) -> 0 | -errno
Napi::Value UffdUnregister(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(address, ArgU64(info, 1));
  MEMDEDUP_ARG(length, ArgU64(info, 2));
  struct uffdio_range range = {};
  range.start = address;
  range.len = length;
  return Result(info.Env(), ioctl(fd, UFFDIO_UNREGISTER, &range));
}

// uffdWriteProtect(fd, address, length, mode) -> 0 | -errno
// mode: UFFDIO_WRITEPROTECT_MODE_WP to protect, 0 to unprotect (and wake waiters).
Napi::Value UffdWriteProtect(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(address, ArgU64(info, 1));
  MEMDEDUP_ARG(length, ArgU64(info, 2));
  MEMDEDUP_ARG(mode, ArgInt(info, 3, 0));
  struct uffdio_writeprotect wp = {};
  wp.range.start = address;
  wp.range.len = length;
  wp.mode = static_cast<__u64>(mode);
  return Result(info.Env(), ioctl(fd, UFFDIO_WRITEPROTECT, &wp));
}

}  // namespace

void InitUserfaultfd(Napi::Env env, Napi::Object exports) {
  Export<UffdOpen>(exports, "uffdOpen");
  Export<UffdApi>(exports, "uffdApi");
  Export<UffdRegister>(exports, "uffdRegister");
  Export<UffdUnregister>(exports, "uffdUnregister");
  Export<UffdWriteProtect>(exports, "uffdWriteProtect");

  Napi::Object c = Napi::Object::New(env);
  SetConst(c, "OPEN_SYSCALL", kSyscall);
  SetConst(c, "OPEN_SYSCALL_USER_MODE_ONLY", kSyscallUserModeOnly);
  SetConst(c, "OPEN_DEVICE", kDevice);
  SetConst(c, "UFFD_FEATURE_PAGEFAULT_FLAG_WP", UFFD_FEATURE_PAGEFAULT_FLAG_WP);
  SetConst(c, "UFFD_FEATURE_EVENT_FORK", UFFD_FEATURE_EVENT_FORK);
  SetConst(c, "UFFD_FEATURE_EVENT_REMAP", UFFD_FEATURE_EVENT_REMAP);
  SetConst(c, "UFFD_FEATURE_EVENT_REMOVE", UFFD_FEATURE_EVENT_REMOVE);
  SetConst(c, "UFFD_FEATURE_MISSING_HUGETLBFS", UFFD_FEATURE_MISSING_HUGETLBFS);
  SetConst(c, "UFFD_FEATURE_MISSING_SHMEM", UFFD_FEATURE_MISSING_SHMEM);
  SetConst(c, "UFFD_FEATURE_EVENT_UNMAP", UFFD_FEATURE_EVENT_UNMAP);
  SetConst(c, "UFFD_FEATURE_SIGBUS", UFFD_FEATURE_SIGBUS);
  SetConst(c, "UFFD_FEATURE_THREAD_ID", UFFD_FEATURE_THREAD_ID);
  SetConst(c, "UFFD_FEATURE_MINOR_HUGETLBFS", UFFD_FEATURE_MINOR_HUGETLBFS);
  SetConst(c, "UFFD_FEATURE_MINOR_SHMEM", UFFD_FEATURE_MINOR_SHMEM);
  SetConst(c, "UFFD_FEATURE_EXACT_ADDRESS", UFFD_FEATURE_EXACT_ADDRESS);
  SetConst(c, "UFFD_FEATURE_WP_HUGETLBFS_SHMEM", UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
  SetConst(c, "UFFD_FEATURE_WP_UNPOPULATED", UFFD_FEATURE_WP_UNPOPULATED);
  SetConst(c, "UFFD_FEATURE_POISON", UFFD_FEATURE_POISON);
  SetConst(c, "UFFD_FEATURE_WP_ASYNC", UFFD_FEATURE_WP_ASYNC);
  SetConst(c, "UFFD_FEATURE_MOVE", UFFD_FEATURE_MOVE);
  SetConst(c, "UFFDIO_REGISTER_MODE_MISSING", UFFDIO_REGISTER_MODE_MISSING);
  SetConst(c, "UFFDIO_REGISTER_MODE_WP", UFFDIO_REGISTER_MODE_WP);
  SetConst(c, "UFFDIO_REGISTER_MODE_MINOR", UFFDIO_REGISTER_MODE_MINOR);
  SetConst(c, "UFFDIO_WRITEPROTECT_MODE_WP", UFFDIO_WRITEPROTECT_MODE_WP);
  SetConst(c, "UFFDIO_WRITEPROTECT_MODE_DONTWAKE", UFFDIO_WRITEPROTECT_MODE_DONTWAKE);
  // Bit numbers in the ioctls masks (1n << BigInt(bit)).
  SetConst(c, "_UFFDIO_REGISTER", _UFFDIO_REGISTER);
  SetConst(c, "_UFFDIO_UNREGISTER", _UFFDIO_UNREGISTER);
  SetConst(c, "_UFFDIO_WAKE", _UFFDIO_WAKE);
  SetConst(c, "_UFFDIO_COPY", _UFFDIO_COPY);
  SetConst(c, "_UFFDIO_ZEROPAGE", _UFFDIO_ZEROPAGE);
  SetConst(c, "_UFFDIO_WRITEPROTECT", _UFFDIO_WRITEPROTECT);
  SetConst(c, "_UFFDIO_CONTINUE", _UFFDIO_CONTINUE);
  SetConst(c, "_UFFDIO_API", _UFFDIO_API);
  exports.Set("uffdConstants", c);
}

}  // namespace memdedup
