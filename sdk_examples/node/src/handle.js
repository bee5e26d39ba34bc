'use strict';
/** Handles on enqueued jobs: wait for the result, read the status and history, cancel. */

const { timestampDate } = require('@bufbuild/protobuf/wkt');
const { JobState, AttemptOutcome, StepStatus, LogLevel, Backoff } = require('../gen/perdure/v1/types_pb.js');
const serde = require('./serde.js');
const { seconds, duration } = require('./options.js');
const { JobCancelledError, JobDeadError, ResultTimeoutError } = require('./errors.js');

/** Lower-case names of a generated enum's values ("PENDING" -> "pending"), without UNSPECIFIED.
 * @param {Record<string, string|number>} enumObject */
function names(enumObject) {
  /** @type {Map<number, string>} */
  const map = new Map();
  for (const [key, value] of Object.entries(enumObject)) {
    if (typeof value === 'number' && value !== 0) map.set(value, key.toLowerCase());
  }
  return map;
}

const STATES = names(JobState);
const OUTCOMES = names(AttemptOutcome);
const STEP_STATUSES = names(StepStatus);
const LOG_LEVELS = names(LogLevel);
const BACKOFF_NAMES = names(Backoff);
// AwaitJob blocks at most this long per call; result() loops.
const AWAIT_SLICE = 60;

/**
 * @typedef {object} ErrorInfo
 * @property {string} type e.g. "TypeError", "ValueError", "perdure.Timeout"
 * @property {string} message
 * @property {string} traceback
 * @property {boolean} nonRetryable
 */

/** @param {any} message @returns {ErrorInfo | null} */
function errorInfo(message) {
  if (!message) return null;
  return { type: message.type, message: message.message, traceback: message.traceback,
    nonRetryable: message.nonRetryable };
}

/** @param {any} ts */
const time = (ts) => (ts ? timestampDate(ts) : null);

/**
 * @typedef {object} AttemptRecord
 * @property {number} number 1 for the first attempt
 * @property {string} outcome running, succeeded, failed, timed_out, worker_lost, lease_expired, cancelled, released, suspended
 * @property {Date | null} startedAt
 * @property {Date | null} endedAt
 * @property {string} workerId
 * @property {string} sidecarId
 * @property {ErrorInfo | null} error
 */

/**
 * Everything GetJob returns, in JavaScript terms (times as Dates, durations in seconds).
 * @typedef {object} JobDetails
 * @property {string} id
 * @property {string} namespace
 * @property {string} name
 * @property {string} status pending, running, suspended, success, dead or cancelled
 * @property {number} attempt attempts started so far
 * @property {number} maxAttempts
 * @property {string} backoff
 * @property {number} initialDelay
 * @property {number} maxDelay
 * @property {number} jitter
 * @property {number} timeout
 * @property {unknown[]} args
 * @property {Record<string, unknown>} kwargs
 * @property {unknown} result
 * @property {ErrorInfo | null} error the last attempt's error
 * @property {string | null} idempotencyKey
 * @property {string | null} parentId
 * @property {Date | null} createdAt
 * @property {Date | null} runAt
 * @property {Date | null} startedAt
 * @property {Date | null} finishedAt
 * @property {AttemptRecord[]} attempts oldest first
 * @property {{name: string, status: string, attempt: number, result: unknown, error: ErrorInfo | null,
 *   recordedAt: Date | null}[]} steps
 * @property {{current: number, total: number, message: string, at: Date | null} | null} progress
 * @property {{attempt: number, level: string, message: string, at: Date | null}[]} logs
 * @property {string | null} waitingFor
 * @property {JobDetails[]} children the jobs this one spawned, without their own history
 * @property {number} priority
 * @property {Record<string, string>} labels
 * @property {string | null} concurrencyKey
 * @property {Date | null} startBy
 * @property {number | null} maxDuration
 * @property {Date | null} deadline
 */

/**
 * @param {import('../gen/perdure/v1/types_pb.js').Job} job
 * @returns {JobDetails}
 */
function detailsFrom(job) {
  const { args, kwargs } = serde.decodeCall(job.payload);
  return {
    id: job.id,
    namespace: job.namespace,
    name: job.name,
    status: STATES.get(job.state) ?? 'unknown',
    attempt: job.attempt,
    maxAttempts: job.retry?.maxAttempts ?? 0,
    backoff: BACKOFF_NAMES.get(job.retry?.backoff ?? 0) ?? 'exponential',
    initialDelay: seconds(job.retry?.initialDelay),
    maxDelay: seconds(job.retry?.maxDelay),
    jitter: job.retry?.jitter ?? 0,
    timeout: seconds(job.timeout),
    args,
    kwargs,
    result: job.result ? serde.decodeResult(job.result) : null,
    error: errorInfo(job.error),
    idempotencyKey: job.idempotencyKey || null,
    parentId: job.parentId || null,
    createdAt: time(job.createdAt),
    runAt: time(job.runAt),
    startedAt: time(job.startedAt),
    finishedAt: time(job.finishedAt),
    attempts: job.attempts.map((a) => ({
      number: a.number,
      outcome: OUTCOMES.get(a.outcome) ?? 'unknown',
      startedAt: time(a.startedAt),
      endedAt: time(a.endedAt),
      workerId: a.workerId,
      sidecarId: a.sidecarId,
      error: errorInfo(a.error),
    })),
    steps: job.steps.map((s) => ({
      name: s.name,
      status: STEP_STATUSES.get(s.status) ?? 'unknown',
      attempt: s.attempt,
      result: s.result ? serde.decodeResult(s.result) : null,
      error: errorInfo(s.error),
      recordedAt: time(s.recordedAt),
    })),
    progress: job.progress
      ? { current: job.progress.current, total: job.progress.total, message: job.progress.message,
        at: time(job.progress.at) }
      : null,
    logs: job.logs.map((r) => ({ attempt: r.attempt, level: LOG_LEVELS.get(r.level) ?? 'info', message: r.message,
      at: time(r.at) })),
    waitingFor: job.waitingFor || null,
    children: job.children.map(detailsFrom),
    priority: job.priority,
    labels: { ...job.labels },
    concurrencyKey: job.concurrencyKey || null,
    startBy: time(job.startBy),
    maxDuration: job.maxDuration ? seconds(job.maxDuration) : null,
    deadline: time(job.deadline),
  };
}

/** A job enqueued through a sidecar. Cheap to make: `perdure.handle(jobId)`. */
class JobHandle {
  /**
   * @param {import('./client.js').Perdure} client
   * @param {string} id
   * @param {{name?: string, deduplicated?: boolean}} [info]
   */
  constructor(client, id, { name = '', deduplicated = false } = {}) {
    /** @private */
    this._client = client;
    this.id = id;
    this.name = name;
    /** True when an earlier job with the same idempotency key was returned instead of a new one. */
    this.deduplicated = deduplicated;
  }

  /**
   * Wait for the job to finish and return its result. Throws JobDeadError (with the last
   * error and the attempt count) if it failed for good, JobCancelledError if it was
   * cancelled, ResultTimeoutError if `timeout` seconds pass first.
   * @param {{timeout?: number}} [options]
   * @returns {Promise<any>}
   */
  async result({ timeout } = {}) {
    const deadline = timeout === undefined ? null : Date.now() + timeout * 1000;
    for (;;) {
      const wait = deadline === null ? AWAIT_SLICE : Math.max(0, Math.min(AWAIT_SLICE, (deadline - Date.now()) / 1000));
      const response = await this._client._call('awaitJob', {
        id: this.id, namespace: this._client.namespace, wait: duration(wait), brief: true,
      }, wait + 30);
      if (response.done) return outcome(/** @type {any} */ (response.job));
      if (deadline !== null && Date.now() >= deadline) {
        const state = STATES.get(response.job?.state ?? 0) ?? 'unknown';
        throw new ResultTimeoutError(`job ${this.id} did not finish within ${timeout} s (it is ${state})`);
      }
    }
  }

  /** @returns {Promise<string>} pending, running, suspended, success, dead or cancelled */
  async status() {
    return (await this.details()).status;
  }

  /** @returns {Promise<JobDetails>} */
  async details() {
    const response = await this._client._call('getJob', { id: this.id, namespace: this._client.namespace });
    return detailsFrom(/** @type {any} */ (response.job));
  }

  /**
   * Cancel the job if it has not finished; a running handler is told to stop (its
   * `ctx.signal` aborts). Resolves to false when it had already finished.
   * @returns {Promise<boolean>}
   */
  async cancel() {
    const response = await this._client._call('cancelJob', { id: this.id, namespace: this._client.namespace });
    return response.cancelled;
  }

  toString() {
    return `JobHandle(${this.id}, ${this.name})`;
  }
}

/** @param {import('../gen/perdure/v1/types_pb.js').Job} job */
function outcome(job) {
  if (job.state === JobState.SUCCESS) return serde.decodeResult(job.result);
  const info = { jobId: job.id, attempts: job.attempt, errorType: job.error?.type ?? '',
    errorMessage: job.error?.message ?? '', traceback: job.error?.traceback ?? '' };
  if (job.state === JobState.CANCELLED) {
    throw new JobCancelledError(`job ${job.id} (${job.name}) was cancelled`, info);
  }
  throw new JobDeadError(`job ${job.id} (${job.name}) is dead after ${job.attempt} attempt(s): `
    + `${info.errorType}: ${info.errorMessage}`, info);
}

module.exports = { JobHandle, detailsFrom, STATES, OUTCOMES };
