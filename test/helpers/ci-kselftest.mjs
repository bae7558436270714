// What the tests import of ci/kselftest.mjs, re-exported here so ci-kselftest.d.mts can type it
// (ci/ stays plain JavaScript, without declarations).
export { compareWithPorts, disagree, parseRun, runAsKtap } from '../../ci/kselftest.mjs'
export { ktap, ktapProblems } from '../../ci/ktap.mjs'
