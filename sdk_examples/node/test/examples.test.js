'use strict';
/** The examples run, and do what they say. */

const test = require('node:test');
const assert = require('node:assert/strict');
const { skipReason, sidecarAddress, stopSidecar } = require('./_sidecar.js');

const skip = skipReason() ?? false;
const database = process.env.PERDURE_TEST_DATABASE_URL;

test.before(async () => {
  if (!skip) process.env.PERDURE_ADDRESS = await sidecarAddress();
});
test.after(stopSidecar);

test('quickstart: the first attempt fails, the second returns the result', { skip }, async () => {
  const example = require('../examples/quickstart.js');
  const outcome = await example.main();
  assert.deepEqual(outcome.outcomes, ['failed', 'succeeded']);
  assert.deepEqual(outcome.result, { sent: true, to: 'user@example.com', subject: 'Welcome!', attempt: 2 });
  assert.equal(outcome.status, 'success');
});

test('cancellation: the handler sees its signal abort and the job ends cancelled', { skip }, async () => {
  const example = require('../examples/cancellation.js');
  const outcome = await example.main();
  assert.equal(outcome.status, 'cancelled');
  assert.deepEqual(outcome.outcomes, ['cancelled']);
  assert.equal(outcome.stoppedBecause, 'cancelled');
  assert.ok(outcome.chunks >= 1 && outcome.chunks < 1000);
});

test('transactional enqueue with pg: committed runs, rolled back never existed', {
  skip: skip || (database ? false : 'set PERDURE_TEST_DATABASE_URL (the database of the sidecar) to run it'),
}, async () => {
  process.env.PERDURE_DATABASE_URL = database;
  const example = require('../examples/transactional_enqueue.js');
  const outcome = await example.main();
  assert.deepEqual(outcome.result, { order: 'o-1', express: true });
  assert.equal(outcome.lostJobs, 0);
  assert.deepEqual(outcome.confirmed, ['o-1']);
});
