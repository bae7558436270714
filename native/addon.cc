// Module entry point: registers each syscall family. No logic lives here.
#include "addon.h"

namespace memdedup {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitMm(env, exports);
  InitPrctl(env, exports);
  InitUserfaultfd(env, exports);
  InitPagemap(env, exports);
  InitTwinIndex(env, exports);
  InitDedup(env, exports);
  InitMshare(env, exports);
  InitRemote(env, exports);
  InitNuma(env, exports);
  return exports;
}

}  // namespace memdedup

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  return memdedup::Init(env, exports);
}

NODE_API_MODULE(memdedup, InitModule)
