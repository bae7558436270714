// Shared helpers for the per-family native files. Policy and validation live in lib/; native code
// re-checks every argument it uses through one accessor per kind (below), on the exact value it
// was given: JS checks are for messages, these are for safety.
#pragma once
#include <napi.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <initializer_list>
#include <new>
#include <optional>
#include <string>

namespace memdedup {

// Every syscall family registers its functions on the exports object.
void InitMm(Napi::Env env, Napi::Object exports);
void InitPrctl(Napi::Env env, Napi::Object exports);
void InitUserfaultfd(Napi::Env env, Napi::Object exports);
void InitPagemap(Napi::Env env, Napi::Object exports);
void InitTwinIndex(Napi::Env env, Napi::Object exports);
void InitDedup(Napi::Env env, Napi::Object exports);
void InitMshare(Napi::Env env, Napi::Object exports);
void InitRemote(Napi::Env env, Napi::Object exports);
void InitNuma(Napi::Env env, Napi::Object exports);

// Copies `length` bytes at `address` of this process into dst through the kernel (never faults
// here: an unreadable page is EFAULT). Returns the bytes copied, or -1 with errno set.
long ReadOwnMemory(void* dst, uintptr_t address, size_t length);

// Throws a TypeError (wrong kind) or RangeError (right kind, bad size) with a Node-style code.
// Only reachable when lib/ was bypassed or an argument changed under it (a getter returning a
// different array the second time): the message names the native function and the argument.
inline void ThrowArgument(const Napi::CallbackInfo& info, size_t i, bool range, const std::string& what) {
  Napi::Env env = info.Env();
  const char* fn = info.Data() != nullptr ? static_cast<const char*>(info.Data()) : "native";
  std::string message = std::string(fn) + ": argument " + std::to_string(i) + " must be " + what;
  Napi::Error error = range ? static_cast<Napi::Error>(Napi::RangeError::New(env, message))
                            : static_cast<Napi::Error>(Napi::TypeError::New(env, message));
  error.Set("code", Napi::String::New(env, range ? "ERR_OUT_OF_RANGE" : "ERR_INVALID_ARG_TYPE"));
  error.ThrowAsJavaScriptException();
}

// Addresses, lengths and offsets travel as JS numbers: user addresses on x86_64 are < 2^47, well
// inside a double's 2^53 exact range, and numbers are much cheaper than BigInt across N-API.
constexpr double kMaxSafeInteger = 9007199254740991.0;

// An integer Number in [min, max] (never coerced: a string or an object is a TypeError).
inline std::optional<double> ArgInteger(const Napi::CallbackInfo& info, size_t i, double min, double max) {
  double value;
  if (napi_get_value_double(info.Env(), info[i], &value) != napi_ok) {
    ThrowArgument(info, i, false, "a number");
    return std::nullopt;
  }
  if (!(value >= min && value <= max) || std::floor(value) != value) {
    ThrowArgument(info, i, true, "an integer >= " + std::to_string(static_cast<int64_t>(min)) + " and <= " +
                                     std::to_string(static_cast<int64_t>(max)));
    return std::nullopt;
  }
  return value;
}

// A non-negative integer Number <= max (addresses, lengths, offsets).
inline std::optional<uint64_t> ArgU64(const Napi::CallbackInfo& info, size_t i, double max = kMaxSafeInteger) {
  auto value = ArgInteger(info, i, 0, max);
  if (!value) return std::nullopt;
  return static_cast<uint64_t>(*value);
}

// An int32 Number in [min, max] (fds, flag words, enum values).
inline std::optional<int> ArgInt(const Napi::CallbackInfo& info, size_t i, int min = INT32_MIN, int max = INT32_MAX) {
  auto value = ArgInteger(info, i, min, max);
  if (!value) return std::nullopt;
  return static_cast<int>(*value);
}

inline std::optional<std::string> ArgString(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsString()) {
    ThrowArgument(info, i, false, "a string");
    return std::nullopt;
  }
  std::string value = info[i].As<Napi::String>().Utf8Value();
  if (value.find('\0') != std::string::npos) {
    ThrowArgument(info, i, false, "a string without null bytes");
    return std::nullopt;
  }
  return value;
}

template <typename T> struct TypedArrayKind;
template <> struct TypedArrayKind<uint8_t> { static constexpr napi_typedarray_type type = napi_uint8_array; static constexpr const char* name = "a Uint8Array"; };
template <> struct TypedArrayKind<int32_t> { static constexpr napi_typedarray_type type = napi_int32_array; static constexpr const char* name = "an Int32Array"; };
template <> struct TypedArrayKind<uint32_t> { static constexpr napi_typedarray_type type = napi_uint32_array; static constexpr const char* name = "a Uint32Array"; };
template <> struct TypedArrayKind<uint64_t> { static constexpr napi_typedarray_type type = napi_biguint64_array; static constexpr const char* name = "a BigUint64Array"; };
template <> struct TypedArrayKind<double> { static constexpr napi_typedarray_type type = napi_float64_array; static constexpr const char* name = "a Float64Array"; };

template <typename T> struct ArrayArg {
  T* data;
  size_t length;  // elements
};

// A typed array of exactly element type T with at least minElements elements, read from the very
// object passed (its type, data pointer and length at this moment: no JS runs between this check
// and the native code that uses it). A detached or resized array has fewer elements and fails.
template <typename T>
std::optional<ArrayArg<T>> ArgTypedArray(const Napi::CallbackInfo& info, size_t i, size_t minElements) {
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  bool is_typed_array = false;
  napi_is_typedarray(info.Env(), info[i], &is_typed_array);
  if (!is_typed_array || napi_get_typedarray_info(info.Env(), info[i], &type, &length, &data, nullptr, nullptr) != napi_ok ||
      type != TypedArrayKind<T>::type) {
    ThrowArgument(info, i, false, TypedArrayKind<T>::name);
    return std::nullopt;
  }
  if (length < minElements || (minElements > 0 && data == nullptr)) {
    ThrowArgument(info, i, true,
                  std::string(TypedArrayKind<T>::name) + " of at least " + std::to_string(minElements) +
                      " elements (it has " + std::to_string(length) + ")");
    return std::nullopt;
  }
  return ArrayArg<T>{static_cast<T*>(data), length};
}

// Unwraps an accessor's result or returns from the native function (the exception is pending).
#define MEMDEDUP_ARG(var, expr)                     \
  auto var##_arg = (expr);                          \
  if (!var##_arg) return info.Env().Undefined();    \
  auto var = *var##_arg

// Result convention (kernel style): >= 0 is success, -errno is failure. lib/errors.ts turns
// the negative value plus the syscall name it already knows into a SyscallError.
inline Napi::Value Result(Napi::Env env, long rc) {
  return Napi::Number::New(env, rc < 0 ? -errno : static_cast<double>(rc));
}

// The N-API boundary of every native function: a std::bad_alloc (a std::vector, a std::string or
// a `new` that could not get memory) is thrown to JS as an Error with Node's code
// ERR_MEMORY_ALLOCATION_FAILED, never std::terminate's abort. No syscall returned it, so it is not
// a SyscallError ENOMEM. The functions allocate before they change anything, so nothing is left
// half-done. This is why C++ exceptions are compiled in (binding.gyp): nothing else throws.
template <Napi::Value (*Fn)(const Napi::CallbackInfo&)>
Napi::Value NoAbort(const Napi::CallbackInfo& info) {
  try {
    return Fn(info);
  } catch (const std::bad_alloc&) {
    // A fixed message: building one could fail the same way.
    const char* fn = info.Data() != nullptr ? static_cast<const char*>(info.Data()) : "native";
    char message[96];
    snprintf(message, sizeof message, "%s: out of memory (a native allocation failed)", fn);
    napi_throw_error(info.Env(), "ERR_MEMORY_ALLOCATION_FAILED", message);
    return info.Env().Undefined();
  }
}

// Registers a native function behind NoAbort; its name is also the callback data, for
// ThrowArgument's message and NoAbort's.
template <Napi::Value (*Fn)(const Napi::CallbackInfo&)>
inline void Export(Napi::Object exports, const char* name) {
  exports.Set(name, Napi::Function::New(exports.Env(), NoAbort<Fn>, name, const_cast<char*>(name)));
}

inline void SetConst(Napi::Object obj, const char* name, double value) {
  obj.Set(name, Napi::Number::New(obj.Env(), value));
}

// The contract with lib/: every slot of a typed array native code reads or writes by index, every
// report field, failure stage and bit lib/ reads, exported by name. lib/native.ts checks at load
// that each table names exactly what it expects (a slot added, removed or moved on one side fails
// the load instead of shifting every read) and reads them by name from there.
struct Named {
  const char* name;
  double value;
};

// A table of named values: distinct numbers (failure stages, modes, state bits).
inline void ExportTable(Napi::Object exports, const char* table, std::initializer_list<Named> entries) {
  Napi::Object object = Napi::Object::New(exports.Env());
  for (const Named& entry : entries) object.Set(entry.name, Napi::Number::New(exports.Env(), entry.value));
  exports.Set(table, object);
}

// The layout of a typed array: each slot's index by name, and `length`, the slots it has.
inline void ExportLayout(Napi::Object exports, const char* layout, size_t length, std::initializer_list<Named> slots) {
  Napi::Object object = Napi::Object::New(exports.Env());
  for (const Named& slot : slots) object.Set(slot.name, Napi::Number::New(exports.Env(), slot.value));
  object.Set("length", Napi::Number::New(exports.Env(), static_cast<double>(length)));
  exports.Set(layout, object);
}

}  // namespace memdedup
