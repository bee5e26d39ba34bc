'use strict';
/** The job context: what a handler knows about its job, its cancellation signal and its steps. */

const { AsyncLocalStorage } = require('node:async_hooks');
const { LogLevel } = require('../gen/perdure/v1/types_pb.js');
const serde = require('./serde.js');
const { NotInJobError, StepNotRecordedError } = require('./errors.js');

/** @type {AsyncLocalStorage<JobContext>} */
const storage = new AsyncLocalStorage();

/**
 * Records a step: (name, result payload or error) -> whether the sidecar wrote it.
 * @typedef {(name: string, outcome: {result?: {data: Uint8Array, encoding: string},
 *   error?: {type: string, message: string}}) => Promise<boolean>} Recorder
 */

/**
 * Passed to every handler after its arguments, and returned by `context()` inside it.
 *
 * `signal` aborts when the attempt must stop: the job was cancelled, its attempt timed out,
 * its sidecar lost the lease, or this process is shutting down (`signal.reason` is an
 * AttemptCancelledError saying which). Pass it on (`fetch(url, { signal })`) or check it;
 * the attempt's slot stays taken until the handler has returned or thrown.
 *
 * `jobId` and `attempt` make good idempotency keys for external APIs: `${ctx.jobId}:charge`
 * stays the same across retries.
 */
class JobContext {
  /**
   * @param {{jobId: string, name: string, namespace: string, attempt: number, maxAttempts: number,
   *   parentId: string, deadline: Date | null, kwargs: Record<string, unknown>, signal: AbortSignal,
   *   recorded: Map<string, unknown>, send: (message: any) => void, record: Recorder}} init
   */
  constructor(init) {
    this.jobId = init.jobId;
    this.name = init.name;
    this.namespace = init.namespace;
    /** 1 for the first attempt. */
    this.attempt = init.attempt;
    this.maxAttempts = init.maxAttempts;
    this.parentId = init.parentId || null;
    /** When the sidecar stops waiting for this attempt (its timeout). */
    this.deadline = init.deadline;
    /** Keyword arguments of the call, when the caller gave some (e.g. from Python). */
    this.kwargs = init.kwargs;
    this.signal = init.signal;
    /** @private */ this._recorded = init.recorded;
    /** @private */ this._send = init.send;
    /** @private */ this._record = init.record;
    /** @private @type {Map<string, number>} */ this._seen = new Map();
    /** Log records kept with the job (returned by details(), streamed by WatchJobs). */
    this.log = {
      debug: (/** @type {unknown} */ m) => this._log(LogLevel.DEBUG, m),
      info: (/** @type {unknown} */ m) => this._log(LogLevel.INFO, m),
      warning: (/** @type {unknown} */ m) => this._log(LogLevel.WARNING, m),
      error: (/** @type {unknown} */ m) => this._log(LogLevel.ERROR, m),
    };
  }

  /** True once the attempt must stop (see `signal`). */
  get cancelled() {
    return this.signal.aborted;
  }

  /** Throws the signal's reason (an AttemptCancelledError) if the attempt must stop. */
  throwIfCancelled() {
    this.signal.throwIfAborted();
  }

  /** The handler is alive: the sidecar extends this attempt's lease at once. */
  heartbeat() {
    this._send({ kind: { case: 'heartbeat', value: { jobId: this.jobId, attempt: this.attempt } } });
  }

  /**
   * Report how far the job has come; the last report is kept with the job and streamed.
   * @param {number} current @param {number} total @param {string} [message]
   */
  progress(current, total, message = '') {
    for (const [label, value] of [['current', current], ['total', total]]) {
      if (typeof value !== 'number') throw new TypeError(`progress ${label} must be a number, got ${String(value)}`);
    }
    this._send({ kind: { case: 'progress', value: {
      jobId: this.jobId, attempt: this.attempt, progress: { current, total, message: String(message) } } } });
  }

  /**
   * Run `fn()` once for this job, whatever the retries: if an earlier attempt recorded this
   * step, its result comes back without calling `fn`. Otherwise `fn` runs, its JSON result is
   * committed, and only then returned. A step that throws is recorded as failed for this
   * attempt and the error propagates. A name used again in one run gets its own checkpoint:
   * "fetch", "fetch#2", ...
   * @template T
   * @param {string} name
   * @param {() => T | Promise<T>} fn
   * @returns {Promise<T>}
   */
  async step(name, fn) {
    if (typeof name !== 'string' || name === '') throw new TypeError('a step needs a non-empty name');
    const count = (this._seen.get(name) ?? 0) + 1;
    this._seen.set(name, count);
    const key = count === 1 ? name : `${name}#${count}`;
    if (this._recorded.has(key)) return /** @type {T} */ (this._recorded.get(key));
    let value;
    try {
      value = await fn();
    } catch (err) {
      const e = /** @type {any} */ (err);
      await this._record(key, { error: { type: errorType(err), message: String(e?.message ?? e) } });
      throw err;
    }
    let payload;
    try {
      payload = serde.encodeResult(value);
    } catch (err) {
      throw new TypeError(`the result of step ${JSON.stringify(key)} must be JSON-serialisable: ${/** @type {Error} */ (err).message}`);
    }
    if (!(await this._record(key, { result: payload }))) {
      throw new StepNotRecordedError(`step ${JSON.stringify(key)} of job ${this.jobId} was not recorded: attempt `
        + `${this.attempt} is no longer the job's current one (it timed out, was cancelled or was taken over)`);
    }
    // What a replay would return, so that a first run and a replay see the same value.
    return serde.decodeResult(payload);
  }

  /** @private @param {number} level @param {unknown} message */
  _log(level, message) {
    this._send({ kind: { case: 'log', value: {
      jobId: this.jobId, record: { attempt: this.attempt, level, message: String(message) } } } });
  }
}

/**
 * The name an error travels under: its `name` when it is more than the generic "Error"
 * (TypeError, or a class that sets it), else its class's name, so that
 * `class PaymentDeclined extends Error {}` is "PaymentDeclined".
 * @param {unknown} err
 */
function errorType(err) {
  if (err instanceof Error || (err !== null && typeof err === 'object')) {
    const e = /** @type {any} */ (err);
    if (typeof e.name === 'string' && e.name && e.name !== 'Error') return e.name;
    const ctor = e.constructor?.name;
    if (typeof ctor === 'string' && ctor && ctor !== 'Object') return ctor;
  }
  return 'Error';
}

/**
 * The context of the job the calling handler runs for (through async calls too).
 * @returns {JobContext}
 */
function context() {
  const ctx = storage.getStore();
  if (!ctx) throw new NotInJobError();
  return ctx;
}

module.exports = { JobContext, context, storage, errorType };
