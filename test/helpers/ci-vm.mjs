// What the tests import of ci/vm.mjs, re-exported here so ci-vm.d.mts can type it (ci/ stays
// plain JavaScript, without declarations).
export { kernelProblem } from '../../ci/vm.mjs'
