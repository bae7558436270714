// NUMA memory-policy family: mbind (place a range's pages on nodes) and move_pages in its query
// form (which node holds each page). Raw syscalls, no libnuma. lib/numa.ts validates the Region
// range and the node list; here the node list is re-checked and turned into the kernel's nodemask.
#include <linux/mempolicy.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#include <vector>

#include "addon.h"

namespace memdedup {
namespace {

// Node ids lib/ may name: 0 … kMaxNodes - 1 (the kernel's own limit, MAX_NUMNODES, is 1 << NODES_SHIFT
// <= 1024 on x86_64; a node the kernel does not have is its EINVAL, not ours).
constexpr uint32_t kMaxNodes = 1024;
constexpr size_t kBitsPerWord = sizeof(unsigned long) * CHAR_BIT;
// move_pages() status queries per syscall: bounds the pointer array native allocates (256 KiB).
constexpr size_t kMovePagesChunk = 32768;

// mbind(address, length, mode, nodes: Uint32Array, count, flags) -> 0 | -errno
// The nodemask is built here from the first `count` node ids, each re-checked to be < kMaxNodes.
// maxnode is the mask's bit count + 1, as libnuma passes it (the kernel reads maxnode - 1 bits).
Napi::Value Mbind(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(address, ArgU64(info, 0));
  MEMDEDUP_ARG(length, ArgU64(info, 1));
  MEMDEDUP_ARG(mode, ArgInt(info, 2, 0));
  MEMDEDUP_ARG(count, ArgU64(info, 4, kMaxNodes));
  MEMDEDUP_ARG(nodes, ArgTypedArray<uint32_t>(info, 3, count));
  MEMDEDUP_ARG(flags, ArgInt(info, 5, 0));
  unsigned long mask[kMaxNodes / kBitsPerWord] = {};
  for (size_t i = 0; i < count; i++) {
    const uint32_t node = nodes.data[i];
    if (node >= kMaxNodes) {
      ThrowArgument(info, 3, true, "node ids < " + std::to_string(kMaxNodes) + " (element " + std::to_string(i) + " is " +
                                       std::to_string(node) + ")");
      return info.Env().Undefined();
    }
    mask[node / kBitsPerWord] |= 1UL << (node % kBitsPerWord);
  }
  // MPOL_DEFAULT takes no nodes: an empty mask is passed as NULL, maxnode 0.
  const unsigned long* nodemask = count == 0 ? nullptr : mask;
  const unsigned long maxnode = count == 0 ? 0 : kMaxNodes + 1;
  return Result(info.Env(), syscall(SYS_mbind, address, length, mode, nodemask, maxnode, static_cast<unsigned>(flags)));
}

// movePagesStatus(address, pages, status: Int32Array) -> 0 | -errno
// move_pages(0, n, pages, NULL, status, 0) over `pages` pages from `address`, in chunks: status[i]
// is the node of page i, or -errno for it (-ENOENT not present, -EFAULT no page there).
Napi::Value MovePagesStatus(const Napi::CallbackInfo& info) {
  MEMDEDUP_ARG(address, ArgU64(info, 0));
  MEMDEDUP_ARG(pages, ArgU64(info, 1));
  MEMDEDUP_ARG(status, ArgTypedArray<int32_t>(info, 2, pages));
  const uint64_t page_size = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  if (pages > (static_cast<uint64_t>(kMaxSafeInteger) - address) / page_size) {
    ThrowArgument(info, 1, true, "a page count whose range ends below 2^53");
    return info.Env().Undefined();
  }
  std::vector<void*> chunk(pages < kMovePagesChunk ? pages : kMovePagesChunk);
  for (uint64_t done = 0; done < pages;) {
    const size_t n = pages - done < chunk.size() ? pages - done : chunk.size();
    for (size_t i = 0; i < n; i++) chunk[i] = reinterpret_cast<void*>(address + (done + i) * page_size);
    long rc = syscall(SYS_move_pages, 0, n, chunk.data(), nullptr, status.data + done, 0);
    if (rc < 0) return Napi::Number::New(info.Env(), -errno);
    done += n;
  }
  return Napi::Number::New(info.Env(), 0);
}

}  // namespace

void InitNuma(Napi::Env env, Napi::Object exports) {
  Export<Mbind>(exports, "mbind");
  Export<MovePagesStatus>(exports, "movePagesStatus");
  Napi::Object constants = Napi::Object::New(env);
  SetConst(constants, "maxNodes", kMaxNodes);
  SetConst(constants, "MPOL_DEFAULT", MPOL_DEFAULT);
  SetConst(constants, "MPOL_BIND", MPOL_BIND);
  SetConst(constants, "MPOL_MF_STRICT", MPOL_MF_STRICT);
  SetConst(constants, "MPOL_MF_MOVE", MPOL_MF_MOVE);
  exports.Set("numaConstants", constants);
}

}  // namespace memdedup
