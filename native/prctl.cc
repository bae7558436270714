// prctl family: one function per operation (never a raw prctl), unused arguments 0 as the
// kernel requires for PR_*_MEMORY_MERGE.
#include <sys/prctl.h>

#include "addon.h"
#include "compat.h"

namespace memdedup {
namespace {

Napi::Value GetMemoryMerge(const Napi::CallbackInfo& info) {
  return Result(info.Env(), prctl(PR_GET_MEMORY_MERGE, 0, 0, 0, 0));
}

Napi::Value SetMemoryMerge(const Napi::CallbackInfo& info) {
  return Result(info.Env(), prctl(PR_SET_MEMORY_MERGE, static_cast<unsigned long>(ArgInt(info, 0)), 0, 0, 0));
}

}  // namespace

void InitPrctl(Napi::Env env, Napi::Object exports) {
  exports.Set("prctlGetMemoryMerge", Napi::Function::New(env, GetMemoryMerge, "prctlGetMemoryMerge"));
  exports.Set("prctlSetMemoryMerge", Napi::Function::New(env, SetMemoryMerge, "prctlSetMemoryMerge"));
}

}  // namespace memdedup
