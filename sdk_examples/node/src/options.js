'use strict';
/**
 * Job options and function limits, checked here so that mistakes fail at the call site.
 * All times are in seconds, as everywhere in Perdure (the Python SDK, the SQL function).
 */

const { create } = require('@bufbuild/protobuf');
const { DurationSchema, timestampFromDate } = require('@bufbuild/protobuf/wkt');
const { Backoff } = require('../gen/perdure/v1/types_pb.js');

const BACKOFFS = { exponential: Backoff.EXPONENTIAL, linear: Backoff.LINEAR, fixed: Backoff.FIXED };

/**
 * @typedef {object} JobOptions
 * @property {number} [maxAttempts] attempts in total, first included (default 3)
 * @property {'exponential'|'linear'|'fixed'} [backoff] how the delay between attempts grows (default exponential)
 * @property {number} [initialDelay] seconds before the first retry (default 1)
 * @property {number} [maxDelay] seconds, the longest delay between attempts (default 60)
 * @property {number} [jitter] 0..1, random spread of each delay (default 0.1)
 * @property {number} [timeout] seconds one attempt may run (default 30)
 * @property {string} [idempotencyKey] a second call with the same key returns the first job
 * @property {number} [delay] seconds before the job may start
 * @property {Date} [runAt] when the job may start (not with `delay`)
 * @property {number} [priority] -1000..1000, higher first (default 0)
 * @property {Record<string, string>} [labels] free-form labels, filterable in ListJobs
 * @property {string} [concurrencyKey] jobs sharing a key run at most the function's key concurrency at once
 * @property {number} [startWithin] seconds: cancel the job if it has not started by then
 * @property {number} [maxDuration] seconds: cancel the job if it has not ended this long after its first start
 */

/**
 * @typedef {object} RateLimit
 * @property {number} limit starts at most...
 * @property {number} per ...per this many seconds
 */

/**
 * @typedef {object} FunctionLimits
 * @property {number} [concurrency] jobs of the function in progress at once, cluster-wide
 * @property {number} [keyConcurrency] jobs in progress per concurrency key (default 1)
 * @property {RateLimit} [rateLimit] starts per period for the function
 * @property {RateLimit} [keyRateLimit] starts per period for each concurrency key
 */

const JOB_OPTIONS = [
  'maxAttempts', 'backoff', 'initialDelay', 'maxDelay', 'jitter', 'timeout', 'idempotencyKey', 'delay', 'runAt',
  'priority', 'labels', 'concurrencyKey', 'startWithin', 'maxDuration',
];
const LIMITS = ['concurrency', 'keyConcurrency', 'rateLimit', 'keyRateLimit'];

const isInt = (/** @type {unknown} */ v) => typeof v === 'number' && Number.isInteger(v);
const isNumber = (/** @type {unknown} */ v) => typeof v === 'number' && Number.isFinite(v);
const show = (/** @type {unknown} */ v) => (v instanceof Date ? v.toISOString() : JSON.stringify(v) ?? String(v));

/**
 * Options with the overrides laid over, checked. Unknown names are refused.
 * @param {JobOptions} base
 * @param {Record<string, unknown>} overrides
 * @param {string[]} [alsoAllowed] other names the caller handles itself
 * @returns {JobOptions}
 */
function mergeOptions(base, overrides, alsoAllowed = []) {
  const unknown = Object.keys(overrides).filter((k) => !JOB_OPTIONS.includes(k) && !alsoAllowed.includes(k)).sort();
  if (unknown.length) {
    throw new TypeError(`unknown option(s) ${unknown.join(', ')}; expected some of ${[...JOB_OPTIONS, ...alsoAllowed].sort().join(', ')}`);
  }
  /** @type {Record<string, unknown>} */
  const merged = { ...base };
  for (const name of JOB_OPTIONS) {
    if (overrides[name] !== undefined && overrides[name] !== null) merged[name] = overrides[name];
  }
  checkOptions(merged);
  return /** @type {JobOptions} */ (merged);
}

/** @param {Record<string, any>} o */
function checkOptions(o) {
  if (o.maxAttempts !== undefined && (!isInt(o.maxAttempts) || o.maxAttempts < 1)) {
    throw new RangeError(`maxAttempts must be an integer of at least 1, got ${show(o.maxAttempts)}`);
  }
  if (o.backoff !== undefined && !(o.backoff in BACKOFFS)) {
    throw new RangeError(`backoff must be one of ${Object.keys(BACKOFFS).join(', ')}, got ${show(o.backoff)}`);
  }
  for (const name of ['initialDelay', 'maxDelay', 'delay']) {
    if (o[name] !== undefined && (!isNumber(o[name]) || o[name] < 0)) {
      throw new RangeError(`${name} must be a number of seconds, not negative, got ${show(o[name])}`);
    }
  }
  for (const name of ['timeout', 'startWithin', 'maxDuration']) {
    if (o[name] !== undefined && (!isNumber(o[name]) || o[name] <= 0)) {
      throw new RangeError(`${name} must be a number of seconds greater than 0, got ${show(o[name])}`);
    }
  }
  if (o.jitter !== undefined && (!isNumber(o.jitter) || o.jitter < 0 || o.jitter > 1)) {
    throw new RangeError(`jitter must be between 0 and 1, got ${show(o.jitter)}`);
  }
  if (o.initialDelay !== undefined && o.maxDelay !== undefined && o.maxDelay < o.initialDelay) {
    throw new RangeError(`maxDelay (${o.maxDelay}) must not be less than initialDelay (${o.initialDelay})`);
  }
  if (o.runAt !== undefined && !(o.runAt instanceof Date && Number.isFinite(o.runAt.getTime()))) {
    throw new TypeError(`runAt must be a valid Date, got ${show(o.runAt)}`);
  }
  if (o.runAt !== undefined && o.delay) throw new TypeError('give either delay or runAt, not both');
  if (o.priority !== undefined && (!isInt(o.priority) || o.priority < -1000 || o.priority > 1000)) {
    throw new RangeError(`priority must be an integer from -1000 to 1000, got ${show(o.priority)}`);
  }
  if (o.labels !== undefined && !isStringMap(o.labels)) {
    throw new TypeError(`labels must be an object of strings to strings, got ${show(o.labels)}`);
  }
  for (const name of ['idempotencyKey', 'concurrencyKey']) {
    if (o[name] !== undefined && (typeof o[name] !== 'string' || o[name] === '')) {
      throw new TypeError(`${name} must be a non-empty string, got ${show(o[name])}`);
    }
  }
}

/** @param {unknown} value */
function isStringMap(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value)
    && Object.values(value).every((v) => typeof v === 'string');
}

/** @param {number} seconds */
function duration(seconds) {
  const whole = Math.floor(seconds);
  let nanos = Math.round((seconds - whole) * 1e9);
  let secs = whole;
  if (nanos >= 1e9) { secs += 1; nanos -= 1e9; }
  return create(DurationSchema, { seconds: BigInt(secs), nanos });
}

/** @param {{seconds: bigint, nanos: number} | undefined} value */
function seconds(value) {
  return value ? Number(value.seconds) + value.nanos / 1e9 : 0;
}

/**
 * The EnqueueRequest (as an init object) for a call with these options; without a payload,
 * the options a batch's jobs share (EnqueueBatchRequest.common).
 * @param {JobOptions} o
 * @param {{namespace: string, name: string, payload?: {data: Uint8Array, encoding: string}}} call
 */
function enqueueRequest(o, { namespace, name, payload }) {
  /** @type {Record<string, any>} */
  const retry = { backoff: o.backoff ? BACKOFFS[o.backoff] : Backoff.UNSPECIFIED };
  if (o.maxAttempts !== undefined) retry.maxAttempts = o.maxAttempts;
  if (o.initialDelay !== undefined) retry.initialDelay = duration(o.initialDelay);
  if (o.maxDelay !== undefined) retry.maxDelay = duration(o.maxDelay);
  if (o.jitter !== undefined) retry.jitter = o.jitter;
  /** @type {Record<string, any>} */
  const request = { namespace, name, payload, retry, idempotencyKey: o.idempotencyKey ?? '' };
  if (o.timeout !== undefined) request.timeout = duration(o.timeout);
  if (o.delay) request.delay = duration(o.delay);
  if (o.runAt !== undefined) request.runAt = timestampFromDate(o.runAt);
  if (o.priority) request.priority = o.priority;
  if (o.labels) request.labels = { ...o.labels };
  if (o.concurrencyKey) request.concurrencyKey = o.concurrencyKey;
  if (o.startWithin !== undefined) request.startWithin = duration(o.startWithin);
  if (o.maxDuration !== undefined) request.maxDuration = duration(o.maxDuration);
  return request;
}

/**
 * The FunctionLimits message (init object) of one function, or null when it declares none.
 * @param {string} name
 * @param {FunctionLimits} limits
 */
function limitsMessage(name, limits) {
  const declared = LIMITS.filter((k) => /** @type {any} */ (limits)[k] !== undefined);
  if (!declared.length) return null;
  for (const key of ['concurrency', 'keyConcurrency']) {
    const value = /** @type {any} */ (limits)[key];
    if (value !== undefined && (!isInt(value) || value < 1)) {
      throw new RangeError(`${key} must be an integer of at least 1, got ${show(value)}`);
    }
  }
  /** @type {Record<string, any>} */
  const message = { name, concurrency: limits.concurrency ?? 0 };
  if (limits.keyConcurrency !== undefined) message.keyConcurrency = limits.keyConcurrency;
  for (const key of /** @type {const} */ (['rateLimit', 'keyRateLimit'])) {
    const rate = limits[key];
    if (rate === undefined) continue;
    if (!rate || !isInt(rate.limit) || rate.limit < 1 || !isNumber(rate.per) || rate.per <= 0) {
      throw new RangeError(`${key} must be {limit: an integer of at least 1, per: seconds greater than 0}, got ${show(rate)}`);
    }
    message[key] = { limit: rate.limit, period: duration(rate.per) };
  }
  return message;
}

/**
 * The options of the SQL function perdure.enqueue (snake_case, seconds), for transactional enqueue.
 * @param {JobOptions} o
 */
function sqlOptions(o) {
  /** @type {Record<string, unknown>} */
  const out = {};
  const names = {
    maxAttempts: 'max_attempts', backoff: 'backoff', initialDelay: 'initial_delay', maxDelay: 'max_delay',
    jitter: 'jitter', timeout: 'timeout', idempotencyKey: 'idempotency_key', delay: 'delay', runAt: 'run_at',
    priority: 'priority', labels: 'labels', concurrencyKey: 'concurrency_key', startWithin: 'start_within',
    maxDuration: 'max_duration',
  };
  for (const [key, sql] of Object.entries(names)) {
    const value = /** @type {any} */ (o)[key];
    if (value !== undefined) out[sql] = value instanceof Date ? value.toISOString() : value;
  }
  return out;
}

module.exports = {
  BACKOFFS, JOB_OPTIONS, LIMITS, mergeOptions, enqueueRequest, limitsMessage, sqlOptions, duration, seconds,
};
