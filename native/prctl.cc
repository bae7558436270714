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
  return Result(info.Env(), prctl(PR_SET_MEMORY_MERGE, static_cast<unsigned long>(ArgInt(info, 0)), 0, 0, 0));
}

// Names an anonymous mapping in /proc/pid/maps ("[anon:<name>]"); EINVAL without CONFIG_ANON_VMA_NAME.
Napi::Value SetVmaAnonName(const Napi::CallbackInfo& info) {
  std::string name = info[2].As<Napi::String>().Utf8Value();
  return Result(info.Env(), prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, ArgAddress(info, 0), ArgSize(info, 1),
                                  reinterpret_cast<unsigned long>(name.c_str())));
}

}  // namespace

void InitPrctl(Napi::Env env, Napi::Object exports) {
  exports.Set("prctlGetMemoryMerge", Napi::Function::New(env, GetMemoryMerge, "prctlGetMemoryMerge"));
  exports.Set("prctlSetMemoryMerge", Napi::Function::New(env, SetMemoryMerge, "prctlSetMemoryMerge"));
  exports.Set("prctlSetVmaAnonName", Napi::Function::New(env, SetVmaAnonName, "prctlSetVmaAnonName"));
}

}  // namespace memdedup
