'use strict';
/** Pure logic: options, payloads, error names. No sidecar needed. */

const test = require('node:test');
const assert = require('node:assert/strict');
const { toBinary, create, fromBinary } = require('@bufbuild/protobuf');
const { EnqueueRequestSchema } = require('../gen/perdure/v1/jobs_pb.js');
const { Backoff } = require('../gen/perdure/v1/types_pb.js');
const { mergeOptions, enqueueRequest, limitsMessage, sqlOptions, seconds } = require('../src/options.js');
const serde = require('../src/serde.js');
const { errorType } = require('../src/context.js');
const { failure } = require('../src/worker.js');
const { Perdure, NonRetryableError, NotStartedError } = require('../src');
const { serviceDefinition } = require('../src/grpc.js');
const { Workers } = require('../gen/perdure/v1/workers_pb.js');

test('options: every option reaches the EnqueueRequest, times in seconds', () => {
  const options = mergeOptions({}, {
    maxAttempts: 5, backoff: 'linear', initialDelay: 0.25, maxDelay: 10, jitter: 0, timeout: 1.5,
    idempotencyKey: 'k-1', delay: 3, priority: 7, labels: { tenant: 'acme' }, concurrencyKey: 'acme',
    startWithin: 60, maxDuration: 120,
  });
  const payload = serde.encodeCall('f', [1], {});
  const request = create(EnqueueRequestSchema, enqueueRequest(options, { namespace: 'ns', name: 'f', payload }));
  const wire = fromBinary(EnqueueRequestSchema, toBinary(EnqueueRequestSchema, request));
  assert.equal(wire.retry?.maxAttempts, 5);
  assert.equal(wire.retry?.backoff, Backoff.LINEAR);
  assert.equal(seconds(wire.retry?.initialDelay), 0.25);
  assert.equal(wire.retry?.jitter, 0);
  assert.equal(seconds(wire.timeout), 1.5);
  assert.equal(seconds(wire.delay), 3);
  assert.deepEqual([wire.idempotencyKey, wire.priority, wire.concurrencyKey], ['k-1', 7, 'acme']);
  assert.deepEqual(wire.labels, { tenant: 'acme' });
  assert.deepEqual([seconds(wire.startWithin), seconds(wire.maxDuration)], [60, 120]);
});

test('options: unset options stay unset, so the sidecar applies its defaults', () => {
  const request = create(EnqueueRequestSchema, enqueueRequest(mergeOptions({}, {}), {
    namespace: 'default', name: 'f', payload: serde.encodeCall('f', [], {}) }));
  assert.equal(request.retry?.maxAttempts, undefined);
  assert.equal(request.retry?.jitter, undefined);
  assert.equal(request.timeout, undefined);
});

test('options: mistakes fail at the call site with a message that names the option', () => {
  const cases = [
    [{ maxAttempts: 0 }, /maxAttempts must be an integer of at least 1/],
    [{ backoff: 'random' }, /backoff must be one of exponential, linear, fixed/],
    [{ timeout: 0 }, /timeout must be a number of seconds greater than 0/],
    [{ jitter: 2 }, /jitter must be between 0 and 1/],
    [{ initialDelay: 5, maxDelay: 1 }, /maxDelay \(1\) must not be less than initialDelay \(5\)/],
    [{ runAt: new Date(), delay: 5 }, /either delay or runAt/],
    [{ priority: 5000 }, /priority must be an integer from -1000 to 1000/],
    [{ labels: { a: 1 } }, /labels must be an object of strings/],
    [{ idempotencyKey: '' }, /idempotencyKey must be a non-empty string/],
    [{ retries: 3 }, /unknown option\(s\) retries/],
  ];
  for (const [options, message] of cases) {
    assert.throws(() => mergeOptions({}, /** @type {any} */ (options)), message);
  }
});

test('options: per-call overrides keep the durable defaults they do not name', () => {
  const defaults = mergeOptions({}, { maxAttempts: 5, timeout: 10 });
  assert.deepEqual(mergeOptions(defaults, { timeout: 2 }), { maxAttempts: 5, timeout: 2 });
});

test('options: limits become FunctionLimits, and none makes no entry', () => {
  assert.equal(limitsMessage('f', {}), null);
  const limits = limitsMessage('f', { concurrency: 3, rateLimit: { limit: 10, per: 60 } });
  assert.equal(limits?.concurrency, 3);
  assert.equal(limits?.rateLimit.limit, 10);
  assert.equal(seconds(limits?.rateLimit.period), 60);
  assert.throws(() => limitsMessage('f', { rateLimit: { limit: 0, per: 1 } }), /rateLimit must be/);
});

test('options: the SQL function gets snake_case names and ISO times', () => {
  const at = new Date('2030-01-02T03:04:05Z');
  assert.deepEqual(sqlOptions(mergeOptions({}, { maxAttempts: 2, runAt: at, idempotencyKey: 'x' })),
    { max_attempts: 2, run_at: '2030-01-02T03:04:05.000Z', idempotency_key: 'x' });
});

test('serde: calls are {"args", "kwargs"} JSON, kwargs only when given', () => {
  const text = (/** @type {{data: Uint8Array}} */ p) => new TextDecoder().decode(p.data);
  assert.equal(text(serde.encodeCall('f', [1, 'a'], {})), '{"args":[1,"a"]}');
  assert.equal(text(serde.encodeCall('f', [], { x: true })), '{"args":[],"kwargs":{"x":true}}');
  assert.deepEqual(serde.decodeCall(serde.encodeCall('f', [1], { k: 2 })), { args: [1], kwargs: { k: 2 } });
  // Another producer's bare value is the single argument.
  assert.deepEqual(serde.decodeCall({ data: new TextEncoder().encode('[1,2]'), encoding: 'json' }),
    { args: [[1, 2]], kwargs: {} });
  assert.throws(() => serde.encodeCall('f', [10n], {}), /the arguments of "f" must be JSON-serialisable/);
  assert.equal(serde.decodeResult(serde.encodeResult(undefined)), null);
});

test('errors: the type is the error name, or the class name when the name is generic', () => {
  class PaymentDeclined extends Error {}
  class Named extends Error { constructor() { super('x'); this.name = 'CustomName'; } }
  assert.equal(errorType(new TypeError('x')), 'TypeError');
  assert.equal(errorType(new PaymentDeclined('x')), 'PaymentDeclined');
  assert.equal(errorType(new Named()), 'CustomName');
  assert.equal(errorType(new Error('x')), 'Error');
  assert.equal(errorType('a string'), 'Error');
  assert.equal(errorType(new NonRetryableError('x')), 'NonRetryableError');
});

test('errors: a thrown value becomes the attempt error, NonRetryableError or nonRetryable=true stop retries', () => {
  const plain = failure(new RangeError('too big'));
  assert.deepEqual([plain.type, plain.message, plain.nonRetryable], ['RangeError', 'too big', false]);
  assert.match(plain.traceback, /RangeError: too big\n\s+at /);
  assert.equal(failure(new NonRetryableError('no')).nonRetryable, true);
  assert.equal(failure(Object.assign(new Error('flagged'), { nonRetryable: true })).nonRetryable, true);
  assert.deepEqual([failure('oops').type, failure('oops').message], ['Error', 'oops']);
  class PaymentDeclined extends Error {}
  assert.match(failure(new PaymentDeclined('card expired')).traceback, /^PaymentDeclined: card expired\n\s+at /);
});

test('grpc: the Work stream is bidirectional, on the contract\'s path', () => {
  const work = serviceDefinition(Workers).work;
  assert.equal(work.path, '/perdure.v1.Workers/Work');
  assert.equal(work.requestStream && work.responseStream, true);
});

test('client: durable() checks its arguments; calls need start()', async () => {
  const perdure = new Perdure({ address: '127.0.0.1:1' });
  assert.throws(() => perdure.durable('', () => 1), /non-empty name/);
  assert.throws(() => perdure.durable('f', /** @type {any} */ ('not a function')), /needs a handler function/);
  assert.throws(() => perdure.durable('f', () => 1, /** @type {any} */ ({ retries: 2 })), /unknown option/);
  const f = perdure.durable('f', () => 1, { concurrency: 2, maxAttempts: 2 });
  assert.throws(() => perdure.durable('f', () => 1), /already registered/);
  await assert.rejects(f(), NotStartedError);
  assert.throws(() => new Perdure({ workerConcurrency: 0 }), /workerConcurrency/);
});
