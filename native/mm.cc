// mmap family: mmap, munmap, mprotect, madvise, mremap, memfd_create, plus the zero-copy
// ArrayBuffer view of a mapping. lib/region.ts owns every mapping and validates everything.
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "addon.h"
#include "compat.h"

namespace memdedup {
namespace {

Napi::Value Mmap(const Napi::CallbackInfo& info) {
  void* hint = reinterpret_cast<void*>(ArgAddress(info, 0));
  void* p = mmap(hint, ArgSize(info, 1), ArgInt(info, 2), ArgInt(info, 3), ArgInt(info, 4),
                 static_cast<off_t>(ArgInt64(info, 5)));
  if (p == MAP_FAILED) return Napi::Number::New(info.Env(), -errno);
  return Napi::Number::New(info.Env(), static_cast<double>(reinterpret_cast<uintptr_t>(p)));
}

Napi::Value Munmap(const Napi::CallbackInfo& info) {
  return Result(info.Env(), munmap(reinterpret_cast<void*>(ArgAddress(info, 0)), ArgSize(info, 1)));
}

Napi::Value Mprotect(const Napi::CallbackInfo& info) {
  return Result(info.Env(), mprotect(reinterpret_cast<void*>(ArgAddress(info, 0)), ArgSize(info, 1),
                                     ArgInt(info, 2)));
}

Napi::Value Madvise(const Napi::CallbackInfo& info) {
  return Result(info.Env(), madvise(reinterpret_cast<void*>(ArgAddress(info, 0)), ArgSize(info, 1),
                                    ArgInt(info, 2)));
}

Napi::Value Mremap(const Napi::CallbackInfo& info) {
  void* p = mremap(reinterpret_cast<void*>(ArgAddress(info, 0)), ArgSize(info, 1), ArgSize(info, 2),
                   ArgInt(info, 3), reinterpret_cast<void*>(ArgAddress(info, 4)));
  if (p == MAP_FAILED) return Napi::Number::New(info.Env(), -errno);
  return Napi::Number::New(info.Env(), static_cast<double>(reinterpret_cast<uintptr_t>(p)));
}

// The ArrayBuffer does not own the memory: lib/region.ts detaches it before munmap/mremap,
// so no JS view can outlive the pages it points at.
Napi::Value Wrap(const Napi::CallbackInfo& info) {
  return Napi::ArrayBuffer::New(info.Env(), reinterpret_cast<void*>(ArgAddress(info, 0)),
                                ArgSize(info, 1));
}

Napi::Value Detach(const Napi::CallbackInfo& info) {
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  if (!buffer.IsDetached()) buffer.Detach();
  return info.Env().Undefined();
}

// Copies out of a mapping that is readable but not writable (no writable view is handed out).
Napi::Value CopyOut(const Napi::CallbackInfo& info) {
  Napi::Uint8Array dst = info[2].As<Napi::Uint8Array>();
  size_t length = ArgSize(info, 1);
  if (length > dst.ByteLength()) length = dst.ByteLength();
  memcpy(dst.Data(), reinterpret_cast<const void*>(ArgAddress(info, 0)), length);
  return Napi::Number::New(info.Env(), static_cast<double>(length));
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  std::string name = info[0].As<Napi::String>().Utf8Value();
  return Result(info.Env(), memfd_create(name.c_str(), static_cast<unsigned>(ArgInt(info, 1))));
}

Napi::Value Ftruncate(const Napi::CallbackInfo& info) {
  return Result(info.Env(), ftruncate(ArgInt(info, 0), static_cast<off_t>(ArgInt64(info, 1))));
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) { return Result(info.Env(), close(ArgInt(info, 0))); }

}  // namespace

void InitMm(Napi::Env env, Napi::Object exports) {
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("munmap", Napi::Function::New(env, Munmap, "munmap"));
  exports.Set("mprotect", Napi::Function::New(env, Mprotect, "mprotect"));
  exports.Set("madvise", Napi::Function::New(env, Madvise, "madvise"));
  exports.Set("mremap", Napi::Function::New(env, Mremap, "mremap"));
  exports.Set("wrap", Napi::Function::New(env, Wrap, "wrap"));
  exports.Set("detach", Napi::Function::New(env, Detach, "detach"));
  exports.Set("copyOut", Napi::Function::New(env, CopyOut, "copyOut"));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("ftruncate", Napi::Function::New(env, Ftruncate, "ftruncate"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd, "closeFd"));

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
  SetConst(c, "MREMAP_MAYMOVE", MREMAP_MAYMOVE);
  SetConst(c, "MREMAP_FIXED", MREMAP_FIXED);
  SetConst(c, "MREMAP_DONTUNMAP", MREMAP_DONTUNMAP);
  SetConst(c, "MFD_CLOEXEC", MFD_CLOEXEC);
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
