'use strict';
/**
 * The sidecar the integration tests use: $PERDURE_ADDRESS (the Python suite passes its own),
 * else a perdured started here on the embedded PostgreSQL in a temporary directory (or on
 * $PERDURE_TEST_DATABASE_URL). Without either, those tests are skipped, saying why.
 */

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { randomUUID } = require('node:crypto');
const { LocalSidecar, findPerdured } = require('../src/sidecar.js');

/** @type {Promise<{address: string, stop: () => Promise<void>}> | null} */
let started = null;

/** Why the integration tests cannot run here, or null. */
function skipReason() {
  if (process.env.PERDURE_ADDRESS) return null;
  return findPerdured() ? null : 'no sidecar: set PERDURE_ADDRESS, or install perdured (pip install perdure)';
}

/** @returns {Promise<string>} the sidecar's address, started once for the file */
async function sidecarAddress() {
  if (process.env.PERDURE_ADDRESS) return process.env.PERDURE_ADDRESS;
  started ??= (async () => {
    const databaseUrl = process.env.PERDURE_TEST_DATABASE_URL;
    const dataDir = databaseUrl ? undefined : fs.mkdtempSync(path.join(os.tmpdir(), 'perdure-node-test-'));
    const local = await LocalSidecar.start({ databaseUrl, dataDir });
    return {
      address: local.address,
      stop: async () => {
        await local.stop();
        if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
      },
    };
  })();
  return (await started).address;
}

async function stopSidecar() {
  if (started) await (await started).stop();
  started = null;
}

/** A namespace of its own for each test: nothing it does is seen by another. */
function freshNamespace() {
  return `node-test-${randomUUID().slice(0, 8)}`;
}

/**
 * Resolves when `check()` is truthy (checked every 20 ms), or rejects after `seconds`.
 * @param {() => unknown | Promise<unknown>} check @param {string} what @param {number} [seconds]
 */
async function until(check, what, seconds = 30) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

module.exports = { skipReason, sidecarAddress, stopSidecar, freshNamespace, until };
