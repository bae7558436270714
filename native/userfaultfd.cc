// userfaultfd family (filled in by the write-tracking work).
#include "addon.h"
#include "compat.h"

namespace memdedup {

void InitUserfaultfd(Napi::Env env, Napi::Object exports) {}

}  // namespace memdedup
