// Shared helpers for the per-family native files. Policy and validation live in lib/;
// these only convert already-checked positional arguments.
#pragma once
#include <napi.h>
#include <cerrno>
#include <cstdint>

namespace memdedup {

// Every syscall family registers its functions on the exports object.
void InitMm(Napi::Env env, Napi::Object exports);
void InitPrctl(Napi::Env env, Napi::Object exports);
void InitUserfaultfd(Napi::Env env, Napi::Object exports);
void InitPagemap(Napi::Env env, Napi::Object exports);
void InitContent(Napi::Env env, Napi::Object exports);

// Addresses and lengths travel as JS numbers: user addresses on x86_64 are < 2^47, well
// inside a double's 2^53 exact range, and numbers are much cheaper than BigInt across N-API.
inline uintptr_t ArgAddress(const Napi::CallbackInfo& info, size_t i) {
  return static_cast<uintptr_t>(info[i].As<Napi::Number>().DoubleValue());
}
inline size_t ArgSize(const Napi::CallbackInfo& info, size_t i) {
  return static_cast<size_t>(info[i].As<Napi::Number>().DoubleValue());
}
inline int ArgInt(const Napi::CallbackInfo& info, size_t i) {
  return info[i].As<Napi::Number>().Int32Value();
}
inline int64_t ArgInt64(const Napi::CallbackInfo& info, size_t i) {
  return info[i].As<Napi::Number>().Int64Value();
}

// Result convention (kernel style): >= 0 is success, -errno is failure. lib/errors.ts turns
// the negative value plus the syscall name it already knows into a SyscallError.
inline Napi::Value Result(Napi::Env env, long rc) {
  return Napi::Number::New(env, rc < 0 ? -errno : static_cast<double>(rc));
}

inline void SetConst(Napi::Object obj, const char* name, double value) {
  obj.Set(name, Napi::Number::New(obj.Env(), value));
}

}  // namespace memdedup
