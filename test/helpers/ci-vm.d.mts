// Types of ci-vm.mjs (ci/vm.mjs's exports the tests use).

/** Every kernel report the lab fails a run on (Oops, BUG, WARNING, lockdep, …). */
export declare const kernelProblem: RegExp
