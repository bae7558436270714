#!/usr/bin/env zx
// Builds the msharefs test programs for the guest, statically (TCG makes compiling in the guest slow):
//   mshare-basic-<key>   tools/testing/selftests/mshare/basic.c from the patched kernel tree (the
//                        upstream selftests series, kernel-patches/0032-0036)
//   mshare-check-<key>   ci/mshare-check.c, memdedup's own checks (sharing across processes, fork,
//                        attacher/owner exit, munmap, MADV_MERGEABLE/MADV_MERGE, bad arguments)
// Both take <linux/msharefs.h> from the tree's include/uapi, so they match the kernel they test.
//
//   npm run kernel && zx ci/mshare-selftests.mjs [--tree=<patched linux tree>]   prints the two paths
//   then, in the guest (root, hugetlb variants need pages):
//   npm run vm -- -- sh -c 'sysctl -w vm.nr_hugepages=4; <mshare-basic>; <mshare-check>'
import { $, fs, path, argv } from 'zx'
import { cacheDir, repoRoot, log, fail, sha256, isMain, runMain } from './lib.mjs'

/**
 * @param {{tree?: string}} [options] patched kernel source (default: the one ci/kernel.mjs builds)
 * @returns {Promise<{basic: string, check: string}>} absolute paths of the static binaries
 */
export async function buildMshareSelftests({ tree = path.join(cacheDir, 'linux-src') } = {}) {
  const uapi = path.join(tree, 'include/uapi/linux/msharefs.h')
  const basicSource = path.join(tree, 'tools/testing/selftests/mshare/basic.c')
  const checkSource = path.join(repoRoot, 'ci/mshare-check.c')
  if (!fs.existsSync(uapi) || !fs.existsSync(basicSource)) fail(`${tree} has no msharefs patches (no ${uapi} or ${basicSource})`)
  const sources = [uapi, basicSource, path.join(tree, 'tools/testing/selftests/mshare/util.c'), checkSource]
  const key = sha256(...sources.map((file) => fs.readFileSync(file))).slice(0, 16)
  const include = path.join(cacheDir, `mshare-include-${key}`)
  await fs.mkdirp(path.join(include, 'linux'))
  await fs.copy(uapi, path.join(include, 'linux/msharefs.h'))
  const outputs = { basic: [basicSource, path.join(cacheDir, `mshare-basic-${key}`)], check: [checkSource, path.join(cacheDir, `mshare-check-${key}`)] }
  for (const [source, output] of Object.values(outputs)) {
    if (fs.existsSync(output)) continue
    // -Wno-unused-result: the upstream selftest ignores read()/ftruncate() results.
    await $`gcc -O2 -Wall -Wno-unused-result -static -isystem ${include} -o ${output}.tmp ${source}`
    await fs.move(`${output}.tmp`, output, { overwrite: true })
    log(`built ${output}`)
  }
  return { basic: outputs.basic[1], check: outputs.check[1] }
}

if (isMain(import.meta.url)) {
  runMain(async () => {
    const built = await buildMshareSelftests(argv.tree ? { tree: path.resolve(argv.tree) } : {})
    process.stdout.write(`${built.basic}\n${built.check}\n`)
    return 0
  })
}
