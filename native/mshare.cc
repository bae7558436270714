// msharefs (the mshare series): page tables shared across processes. An msharefs file is a
// control file: its size is the region (ftruncate, once), MSHAREFS_CREATE_MAPPING maps memory
// into the region's own mm, and every process that mmaps the file shares that mm's page tables.
// One function per ioctl; mount(2) of msharefs is here because nothing else mounts.
#include <sys/ioctl.h>
#include <sys/mount.h>

#include "addon.h"
#include "compat.h"

namespace memdedup {
namespace {

// MSHAREFS_CREATE_MAPPING(fd, regionOffset, size, fileOffset, prot, flags, mapFd) → 0 | -errno.
// mapFd is -1 (stored as the u32 0xffffffff, as the C selftests do) for MAP_ANONYMOUS.
Napi::Value CreateMapping(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(region_offset, ArgU64(info, 1));
  MEMDEDUP_ARG(size, ArgU64(info, 2));
  MEMDEDUP_ARG(offset, ArgU64(info, 3));
  MEMDEDUP_ARG(prot, ArgInt(info, 4, 0));
  MEMDEDUP_ARG(flags, ArgInt(info, 5, 0));
  MEMDEDUP_ARG(map_fd, ArgInt(info, 6, -1));
  struct mshare_create create = {};
  create.region_offset = region_offset;
  create.size = size;
  create.offset = offset;
  create.prot = static_cast<__u32>(prot);
  create.flags = static_cast<__u32>(flags);
  create.fd = static_cast<__u32>(map_fd);
  return Result(info.Env(), ioctl(fd, MSHAREFS_CREATE_MAPPING, &create));
}

// MSHAREFS_UNMAP(fd, regionOffset, size) → 0 | -errno.
Napi::Value Unmap(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(fd, ArgInt(info, 0, 0));
  MEMDEDUP_ARG(region_offset, ArgU64(info, 1));
  MEMDEDUP_ARG(size, ArgU64(info, 2));
  struct mshare_unmap unmap = {};
  unmap.region_offset = region_offset;
  unmap.size = size;
  return Result(info.Env(), ioctl(fd, MSHAREFS_UNMAP, &unmap));
}

// mount -t msharefs msharefs <target>.
Napi::Value MountMsharefs(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(target, ArgString(info, 0));
  return Result(info.Env(), mount("msharefs", target.c_str(), "msharefs", 0, nullptr));
}

}  // namespace

void InitMshare(Napi::Env env, Napi::Object exports) {
  Export<CreateMapping>(exports, "mshareCreateMapping");
  Export<Unmap>(exports, "mshareUnmap");
  Export<MountMsharefs>(exports, "mountMsharefs");
  Napi::Object constants = Napi::Object::New(env);
  SetConst(constants, "MSHAREFS_CREATE_MAPPING", static_cast<double>(MSHAREFS_CREATE_MAPPING));
  SetConst(constants, "MSHAREFS_UNMAP", static_cast<double>(MSHAREFS_UNMAP));
  SetConst(constants, "MAP_SHARED_VALIDATE", MAP_SHARED_VALIDATE);
  SetConst(constants, "MAP_HUGE_SHIFT", MAP_HUGE_SHIFT);
  exports.Set("mshareConstants", constants);
}

}  // namespace memdedup
