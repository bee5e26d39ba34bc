'use strict';
/** Perdure for Node.js. See README.md beside this package. */

const { Perdure } = require('./client.js');
const { JobHandle } = require('./handle.js');
const { JobContext, context } = require('./context.js');
const { enqueueInTransaction } = require('./transactional.js');
const { LocalSidecar } = require('./sidecar.js');
const errors = require('./errors.js');

module.exports = {
  Perdure,
  JobHandle,
  JobContext,
  context,
  enqueueInTransaction,
  LocalSidecar,
  ...errors,
};
