// What the tests import of ci/kernel.mjs, re-exported here so ci-kernel.d.mts can type it (ci/
// stays plain JavaScript, without declarations).
export { flavourFragment, flavours } from '../../ci/kernel.mjs'
