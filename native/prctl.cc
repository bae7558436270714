// prctl family: one function per operation (never a raw prctl), unused arguments 0 as the
// kernel requires for PR_*_MEMORY_MERGE.
#include <sys/prctl.h>

#include "addon.h"
#include "compat.h"

#include <string>

namespace memdedup {
namespace {

Napi::Value GetMemoryMerge(const Napi::CallbackInfo& info) {
  return Result(info.Env(), prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0));
}

Napi::Value SetMemoryMerge(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(value, ArgInt(info, 0, 0, 1));
  return Result(info.Env(), prctl(PR_SET_MEMORY_MERGE, static_cast<unsigned long>(value), 0, 0, 0));
}

// Names an anonymous mapping in /proc/pid/maps ("[anon:<name>]"); EINVAL without CONFIG_ANON_VMA_NAME.
Napi::Value SetVmaAnonName(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(address, ArgU64(info, 0));
  MEMDEDUP_ARG(length, ArgU64(info, 1));
  MEMDEDUP_ARG(name, ArgString(info, 2));
  return Result(info.Env(), prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, address, length,
                                  reinterpret_cast<unsigned long>(name.c_str())));
}

}  // namespace

void InitPrctl(Napi::Env env, Napi::Object exports) {
  Export<GetMemoryMerge>(exports, "prctlGetMemoryMerge");
  Export<SetMemoryMerge>(exports, "prctlSetMemoryMerge");
  Export<SetVmaAnonName>(exports, "prctlSetVmaAnonName");
}

}  // namespace memdedup
