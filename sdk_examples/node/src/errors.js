'use strict';
/** Errors of the Perdure SDK. Each class's default message says what it means. */

class PerdureError extends Error {
  /** @param {string} [message] */
  constructor(message) {
    super(message ?? 'Something went wrong in Perdure.');
    this.name = new.target.name;
  }
}

class NotStartedError extends PerdureError {
  constructor(message = 'Perdure is not started: call `await perdure.start()` first.') { super(message); }
}

class SidecarUnavailableError extends PerdureError {
  constructor(message = 'The perdured sidecar cannot be reached.') { super(message); }
}

class JobNotFoundError extends PerdureError {
  constructor(message = 'No such job in this namespace.') { super(message); }
}

class InvalidArgumentError extends PerdureError {
  constructor(message = 'The sidecar refused the request as malformed.') { super(message); }
}

class NotInJobError extends PerdureError {
  constructor(message = "perdure's context() is only available inside a durable function's handler.") { super(message); }
}

class StepNotRecordedError extends PerdureError {
  constructor(message = "The step was not recorded: this attempt is no longer the job's current one.") { super(message); }
}

/** `handle.result({ timeout })` gave up waiting; the job goes on. */
class ResultTimeoutError extends PerdureError {
  constructor(message = 'The job did not finish in time.') { super(message); }
}

/**
 * The job did not finish with a result. `errorType`, `errorMessage` and `traceback` are the
 * last attempt's error, whatever the language of the handler that raised it.
 */
class JobFailedError extends PerdureError {
  /**
   * @param {string} message
   * @param {{jobId: string, attempts: number, errorType?: string, errorMessage?: string, traceback?: string}} info
   */
  constructor(message, { jobId, attempts, errorType = '', errorMessage = '', traceback = '' }) {
    super(message);
    this.jobId = jobId;
    this.attempts = attempts;
    this.errorType = errorType;
    this.errorMessage = errorMessage;
    this.traceback = traceback;
  }
}

/** The job failed for good: its attempts ran out or it raised a non-retryable error. */
class JobDeadError extends JobFailedError {}

/** The job was cancelled. */
class JobCancelledError extends JobFailedError {}

/** Throw this (or a subclass) in a handler to fail the job at once, without retrying it. */
class NonRetryableError extends Error {
  /** @param {string} [message] @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message ?? 'The job failed and must not be retried.', options);
    this.name = new.target.name;
  }
}

/**
 * The reason of a handler's AbortSignal (`ctx.signal.reason`): the sidecar or this process
 * stopped the attempt. `reason` is timeout, cancelled, shutdown or lease_lost.
 */
class AttemptCancelledError extends PerdureError {
  /** @param {string} reason @param {string} message */
  constructor(reason, message) {
    super(message);
    this.reason = reason;
  }
}

module.exports = {
  PerdureError, NotStartedError, SidecarUnavailableError, JobNotFoundError, InvalidArgumentError, NotInJobError,
  StepNotRecordedError, ResultTimeoutError, JobFailedError, JobDeadError, JobCancelledError, NonRetryableError,
  AttemptCancelledError,
};
