// Types of ci-kernel.mjs (ci/kernel.mjs's exports the tests use).

/** The lab kernel's flavours: debug (the test suite's) and perf (the benchmarks'). */
export declare const flavours: string[]
/** The config fragment of a flavour; throws (a lab failure) for an unknown one or a fragment without the debug options perf drops. */
export declare function flavourFragment(fragment: string, flavour: string): string
