'use strict';
/**
 * The SDK against a real sidecar: enqueue, results and errors, retries, idempotency,
 * cancellation, timeouts, the concurrency limit, steps, draining on stop.
 */

const test = require('node:test');
const assert = require('node:assert/strict');
const { setTimeout: sleep } = require('node:timers/promises');
const {
  Perdure, NonRetryableError, JobDeadError, JobCancelledError, ResultTimeoutError, NotInJobError, context,
} = require('../src');
const { skipReason, sidecarAddress, stopSidecar, freshNamespace, until } = require('./_sidecar.js');

const skip = skipReason() ?? false;
/** @type {Perdure[]} */
let clients = [];

/** @param {ConstructorParameters<typeof Perdure>[0]} [options] */
async function client(options = {}) {
  const perdure = new Perdure({ address: await sidecarAddress(), namespace: freshNamespace(), ...options });
  clients.push(perdure);
  return perdure;
}

/** A promise with its resolver, to hold a handler until the test lets it go. */
function gate() {
  /** @type {(value?: unknown) => void} */
  let open = () => {};
  const promise = new Promise((resolve) => { open = resolve; });
  return { promise, open };
}

test.afterEach(async () => {
  await Promise.all(clients.map((c) => c.stop()));
  clients = [];
});
test.after(stopSidecar);

test('enqueue then result: arguments and result travel as JSON; details tell the story', { skip }, async () => {
  const perdure = await client();
  const add = perdure.durable('math:add', async (a, b, ctx) => ({ sum: a + b, attempt: ctx.attempt, job: ctx.jobId }));
  await perdure.start();
  const handle = await add(2, 40);
  const result = await handle.result({ timeout: 30 });
  assert.deepEqual(result, { sum: 42, attempt: 1, job: handle.id });
  assert.equal(await handle.status(), 'success');
  const details = await handle.details();
  assert.deepEqual([details.name, details.args, details.maxAttempts, details.timeout], ['math:add', [2, 40], 3, 30]);
  assert.deepEqual(details.attempts.map((a) => a.outcome), ['succeeded']);
  assert.ok(details.finishedAt instanceof Date && details.attempts[0].workerId.length > 0);
});

test('enqueueMany: batches of jobs with shared options, run and answered in order', { skip }, async () => {
  const perdure = await client({ workerConcurrency: 50 });
  const seen = new Set();
  perdure.durable('batch:square', async (n) => { seen.add(n); return n * n; });
  await perdure.start();
  const calls = Array.from({ length: 2500 }, (_, n) => [n]); // three batches, two at a time
  const handles = await perdure.enqueueMany('batch:square', calls, { priority: 3, labels: { run: 'many' } });
  assert.equal(new Set(handles.map((h) => h.id)).size, 2500);
  assert.deepEqual(await Promise.all([0, 1234, 2499].map((n) => handles[n].result({ timeout: 60 }))), [0, 1234 ** 2, 2499 ** 2]);
  const details = await handles[1999].details();
  assert.deepEqual([details.args, details.priority, details.labels], [[1999], 3, { run: 'many' }]);
  await until(() => seen.size === 2500, 'every job to run', 60);

  await assert.rejects(perdure.enqueueMany('batch:square', [[1], 2]), /each call is an array/);
  await assert.rejects(perdure.enqueueMany('batch:square', [[1]], { idempotencyKey: 'k' }), /one job/);
  await assert.rejects(perdure.enqueueMany('batch:square', [[1]], { priority: 10 ** 6 }), /priority/);
});

test('a failing attempt is retried with backoff, then succeeds', { skip }, async () => {
  const perdure = await client();
  const flaky = perdure.durable('net:fetch', async (ctx) => {
    if (ctx.attempt < 3) throw new TypeError(`attempt ${ctx.attempt} fails`);
    return 'fetched';
  }, { initialDelay: 0.05, maxAttempts: 3 });
  await perdure.start();
  const handle = await flaky();
  assert.equal(await handle.result({ timeout: 30 }), 'fetched');
  const { attempts } = await handle.details();
  assert.deepEqual(attempts.map((a) => [a.outcome, a.error?.type ?? null, a.error?.message ?? null]), [
    ['failed', 'TypeError', 'attempt 1 fails'], ['failed', 'TypeError', 'attempt 2 fails'], ['succeeded', null, null]]);
});

test('dead after max attempts: the error type, message and stack come back', { skip }, async () => {
  class PaymentDeclined extends Error {}
  const perdure = await client();
  /** @type {string[]} */
  const events = [];
  perdure.on('job:error', (e) => { events.push(`error:${e.attempt}:${e.error?.type}`); });
  perdure.on('job:dead', (e) => { events.push(`dead:${e.attempt}`); });
  const charge = perdure.durable('payments:charge', async () => {
    throw new PaymentDeclined('card expired');
  }, { maxAttempts: 2, initialDelay: 0.05 });
  await perdure.start();
  const handle = await charge({ amount: 10 });
  const err = await handle.result({ timeout: 30 }).then(() => null, (e) => e);
  assert.ok(err instanceof JobDeadError, String(err));
  assert.deepEqual([err.errorType, err.errorMessage, err.attempts], ['PaymentDeclined', 'card expired', 2]);
  assert.match(err.traceback, /^PaymentDeclined: card expired\n\s+at .*sdk.test.js/);
  assert.equal(await handle.status(), 'dead');
  await until(() => events.length === 3, 'the lifecycle callbacks');
  assert.deepEqual(events, ['error:1:PaymentDeclined', 'error:2:PaymentDeclined', 'dead:2']);
});

test('NonRetryableError fails the job at once', { skip }, async () => {
  const perdure = await client();
  const validate = perdure.durable('input:validate', async () => {
    throw new NonRetryableError('malformed input');
  }, { maxAttempts: 5 });
  await perdure.start();
  const err = await (await validate()).result({ timeout: 30 }).then(() => null, (e) => e);
  assert.ok(err instanceof JobDeadError);
  assert.deepEqual([err.errorType, err.errorMessage, err.attempts], ['NonRetryableError', 'malformed input', 1]);
});

test('the same idempotency key gives the same job, run once', { skip }, async () => {
  const perdure = await client();
  let runs = 0;
  const charge = perdure.durable('payments:once', async (invoice) => { runs += 1; return { invoice }; });
  await perdure.start();
  const first = await charge.options({ idempotencyKey: 'inv-7' })('inv-7');
  const again = await charge.options({ idempotencyKey: 'inv-7' })('inv-7');
  assert.equal(again.id, first.id);
  assert.deepEqual([first.deduplicated, again.deduplicated], [false, true]);
  assert.deepEqual(await again.result({ timeout: 30 }), { invoice: 'inv-7' });
  assert.equal(runs, 1);
});

test('cancel: the running handler\'s signal aborts with reason "cancelled"; result() rejects', { skip }, async () => {
  const perdure = await client();
  const started = gate();
  /** @type {string[]} */
  const seen = [];
  const wait = perdure.durable('jobs:wait', async (ctx) => {
    started.open();
    await new Promise((resolve, reject) => ctx.signal.addEventListener('abort', () => {
      seen.push(ctx.signal.reason.reason);
      reject(ctx.signal.reason);
    }));
  });
  await perdure.start();
  const handle = await wait();
  await started.promise;
  assert.equal(await handle.cancel(), true);
  await assert.rejects(handle.result({ timeout: 30 }), JobCancelledError);
  await until(async () => (await handle.details()).attempts[0]?.outcome === 'cancelled', 'the cancelled attempt');
  assert.deepEqual(seen, ['cancelled']);
  assert.equal(await handle.cancel(), false); // already finished
});

test('timeout: the signal aborts with reason "timeout" and the attempt fails as perdure.Timeout', { skip }, async () => {
  const perdure = await client();
  /** @type {string[]} */
  const reasons = [];
  const hang = perdure.durable('jobs:hang', async (ctx) => {
    try {
      await sleep(60_000, undefined, { signal: ctx.signal });
    } finally {
      reasons.push(ctx.signal.reason?.reason);
    }
  }, { timeout: 0.3, maxAttempts: 2, initialDelay: 0.05 });
  await perdure.start();
  const err = await (await hang()).result({ timeout: 30 }).then(() => null, (e) => e);
  assert.ok(err instanceof JobDeadError);
  assert.deepEqual([err.errorType, err.attempts], ['perdure.Timeout', 2]);
  await until(() => reasons.length === 2, 'both handlers to stop');
  assert.deepEqual(reasons, ['timeout', 'timeout']);
});

test('never more handlers at once than workerConcurrency', { skip }, async () => {
  const perdure = await client({ workerConcurrency: 2 });
  const release = gate();
  let running = 0;
  let most = 0;
  const work = perdure.durable('jobs:work', async (n) => {
    running += 1;
    most = Math.max(most, running);
    await release.promise;
    running -= 1;
    return n;
  });
  await perdure.start();
  const handles = await Promise.all([1, 2, 3, 4, 5, 6].map((n) => work(n)));
  await until(() => running === 2, 'two handlers to run');
  const states = await Promise.all(handles.map((h) => h.status()));
  assert.equal(states.filter((s) => s === 'running').length, 2);
  release.open();
  assert.deepEqual(await Promise.all(handles.map((h) => h.result({ timeout: 30 }))), [1, 2, 3, 4, 5, 6]);
  assert.equal(most, 2);
});

test('steps: a retried attempt replays what the last one recorded', { skip }, async () => {
  const perdure = await client();
  let charges = 0;
  const order = perdure.durable('orders:place', async (ctx) => {
    const charge = await ctx.step('charge', async () => { charges += 1; return { charged: 25 }; });
    const again = await ctx.step('charge', () => 'a second checkpoint of the same name');
    if (ctx.attempt === 1) throw new Error('the shipping service is down');
    return { charge, again, attempt: ctx.attempt };
  }, { initialDelay: 0.05 });
  await perdure.start();
  const handle = await order();
  assert.deepEqual(await handle.result({ timeout: 30 }),
    { charge: { charged: 25 }, again: 'a second checkpoint of the same name', attempt: 2 });
  assert.equal(charges, 1);
  assert.deepEqual((await handle.details()).steps.map((s) => s.name), ['charge', 'charge#2']);
});

test('stop() drains: a handler past the grace is stopped and its job runs again elsewhere', { skip }, async () => {
  const first = await client({ shutdownGrace: 0.2 });
  const started = gate();
  /** @type {string[]} */
  const reasons = [];
  first.durable('jobs:long', async (ctx) => {
    started.open();
    try {
      await sleep(60_000, undefined, { signal: ctx.signal });
    } finally {
      reasons.push(ctx.signal.reason?.reason);
    }
  });
  await first.start();
  const handle = await first.enqueue('jobs:long');
  await started.promise;
  await first.stop();
  assert.deepEqual(reasons, ['shutdown']);
  const second = await client({ namespace: first.namespace });
  second.durable('jobs:long', async () => 'done on the second worker');
  await second.start();
  assert.equal(await second.handle(handle.id).result({ timeout: 30 }), 'done on the second worker');
  const outcomes = (await second.handle(handle.id).details()).attempts.map((a) => a.outcome);
  assert.deepEqual(outcomes, ['released', 'succeeded']);
});

test('by name, with kwargs; context() inside the handler; result() can time out', { skip }, async () => {
  const perdure = await client();
  perdure.durable('greet', async (name, ctx) => {
    assert.equal(context(), ctx);
    return `${ctx.kwargs.greeting ?? 'hello'}, ${name}`;
  });
  await perdure.start();
  const handle = await perdure.enqueue('greet', ['Ada'], { kwargs: { greeting: 'bonjour' } });
  assert.equal(await handle.result({ timeout: 30 }), 'bonjour, Ada');
  assert.throws(() => context(), NotInJobError);
  const nobody = await perdure.enqueue('nobody:serves:this');
  await assert.rejects(nobody.result({ timeout: 0.2 }), ResultTimeoutError);
  assert.equal(await nobody.status(), 'pending');
});

test('heartbeats: ctx.heartbeat() and automatic ones keep a long job running', { skip }, async () => {
  const perdure = await client({ heartbeatInterval: 0.05 });
  const long = perdure.durable('jobs:beating', async (ctx) => {
    ctx.heartbeat();
    await sleep(300);
    return 'alive';
  });
  await perdure.start();
  assert.equal(await (await long()).result({ timeout: 30 }), 'alive');
});
