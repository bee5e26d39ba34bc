'use strict';
/**
 * Where the examples find a sidecar: $PERDURE_ADDRESS, else a perdured they start themselves
 * (on the embedded PostgreSQL in ./.perdure, or on $PERDURE_DATABASE_URL).
 */

const { LocalSidecar } = require('../src');

/** @returns {Promise<{address: string, stop: () => Promise<void>}>} */
async function sidecar() {
  if (process.env.PERDURE_ADDRESS) return { address: process.env.PERDURE_ADDRESS, stop: async () => {} };
  const local = await LocalSidecar.start({ databaseUrl: process.env.PERDURE_DATABASE_URL });
  return { address: local.address, stop: () => local.stop() };
}

module.exports = { sidecar };
