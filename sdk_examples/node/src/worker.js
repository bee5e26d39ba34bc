'use strict';
/** The worker side of the `Work` stream: runs this process's handlers for the sidecar. */

const os = require('node:os');
const grpc = require('@grpc/grpc-js');
const { CancelReason } = require('../gen/perdure/v1/workers_pb.js');
const { StepStatus } = require('../gen/perdure/v1/types_pb.js');
const { timestampDate } = require('@bufbuild/protobuf/wkt');
const serde = require('./serde.js');
const { JobContext, storage, errorType } = require('./context.js');
const { NonRetryableError, AttemptCancelledError } = require('./errors.js');
const { STATES } = require('./handle.js');

// The sidecar refused the worker: a bad registration, or credentials. Retrying will not help.
const REFUSED = [grpc.status.INVALID_ARGUMENT, grpc.status.UNAUTHENTICATED, grpc.status.PERMISSION_DENIED];

const SDK = 'perdure-node/0.1.0';
const REASONS = new Map([
  [CancelReason.TIMEOUT, ['timeout', 'the attempt exceeded its timeout']],
  [CancelReason.CANCELLED, ['cancelled', 'the job was cancelled']],
  [CancelReason.SHUTDOWN, ['shutdown', 'the sidecar is shutting down and handed the job back']],
  [CancelReason.LEASE_LOST, ['lease_lost', "the sidecar lost the job's lease; another may run it"]],
]);

/**
 * What lifecycle callbacks receive (`perdure.on(...)`).
 * @typedef {{jobId: string, name: string, attempt: number, maxAttempts: number, result?: unknown,
 *   error?: import('./handle.js').ErrorInfo}} JobEvent
 */

/** One stream to the sidecar; what was sent on it means nothing on the next one. */
class Session {
  /** @param {grpc.ClientDuplexStream<any, any>} call */
  constructor(call) {
    this.call = call;
    this.open = true;
    /** @type {Map<string, (ack: any) => void>} */
    this.acks = new Map();
    /** @type {Map<string, (recorded: boolean) => void>} */
    this.stepAcks = new Map();
  }

  /** @param {any} message */
  send(message) {
    if (this.open) this.call.write(message);
  }

  close() {
    this.open = false;
    for (const resolve of this.acks.values()) resolve(null);
    for (const resolve of this.stepAcks.values()) resolve(false);
    this.acks.clear();
    this.stepAcks.clear();
  }
}

/**
 * @typedef {object} Running
 * @property {AbortController} controller
 * @property {Session} session
 * @property {Promise<void>} done
 */

class Worker {
  /**
   * @param {{workers: any, namespace: string, handlers: Map<string, Function>, limits: any[],
   *   concurrency: number, heartbeatInterval: number,
   *   emit: (event: string, info: JobEvent) => Promise<void>, logger: Pick<Console, 'warn' | 'error'>}} init
   */
  constructor(init) {
    this.workers = init.workers;
    this.namespace = init.namespace;
    this.handlers = init.handlers;
    this.limits = init.limits;
    this.concurrency = init.concurrency;
    this.heartbeatInterval = init.heartbeatInterval;
    this.emit = init.emit;
    this.logger = init.logger;
    /** @type {Map<string, Running>} */
    this.running = new Map();
    /** Running jobs not answered yet: a slot frees when its outcome is sent, not when acknowledged. */
    this.unanswered = 0;
    /** @type {any[]} assignments beyond the concurrency limit (the sidecar sends none: a safeguard) */
    this.queue = [];
    /** @type {Session | null} */
    this.session = null;
    this.stopping = false;
    this.workerId = '';
    /** @type {Error | null} a registration the sidecar refused: retrying would not help */
    this.fatal = null;
    /** @type {Array<{resolve: () => void, reject: (err: Error) => void}>} */
    this._waiters = [];
    /** @type {(() => void) | null} */
    this._wake = null;
    /** @type {Promise<void> | null} */
    this.done = null;
  }

  get registered() {
    return this.session !== null && this.workerId !== '';
  }

  start() {
    this.done = this._run();
  }

  /** Resolves once the stream is registered with the sidecar. */
  untilRegistered() {
    if (this.fatal) return Promise.reject(this.fatal);
    if (this.registered) return Promise.resolve();
    return /** @type {Promise<void>} */ (new Promise((resolve, reject) => { this._waiters.push({ resolve: () => resolve(undefined), reject }); }));
  }

  /** Keep a stream open until stopped, reconnecting with backoff when the sidecar goes away. */
  async _run() {
    let delay = 50;
    while (!this.stopping) {
      try {
        await this._session();
        delay = 50;
      } catch (err) {
        const e = /** @type {any} */ (err);
        if (REFUSED.includes(e.code)) {
          this.fatal = new Error(`the sidecar refused this worker: ${e.details ?? e.message}`);
          this.logger.error(`perdure: ${this.fatal.message}`);
          for (const waiter of this._waiters.splice(0)) waiter.reject(this.fatal);
          return;
        }
      } finally {
        this._abandon();
      }
      if (!this.stopping) {
        await new Promise((resolve) => {
          const timer = setTimeout(resolve, delay);
          this._wake = () => { clearTimeout(timer); resolve(undefined); };
        });
        this._wake = null;
        delay = Math.min(delay * 2, 2000);
      }
    }
  }

  /** @returns {Promise<void>} */
  _session() {
    return new Promise((resolve, reject) => {
      const call = this.workers.work(new grpc.Metadata({ waitForReady: true }));
      const session = new Session(call);
      this.session = session;
      /** @type {NodeJS.Timeout | null} */
      let beats = null;
      const finish = (/** @type {Error | null} */ err) => {
        if (beats) clearInterval(beats);
        if (!session.open) return;
        session.close();
        if (err) reject(err); else resolve();
      };
      call.on('data', (/** @type {any} */ message) => {
        try {
          if (message.kind.case === 'registered' && this.heartbeatInterval > 0) {
            beats = setInterval(() => this._heartbeats(session), this.heartbeatInterval * 1000);
            beats.unref();
          }
          this._onMessage(session, message);
        } catch (err) {
          this.logger.error('perdure: a message from the sidecar could not be handled', err);
        }
      });
      call.on('end', () => finish(null));
      call.on('error', (/** @type {any} */ err) => finish(this.stopping && err.code === grpc.status.CANCELLED ? null : err));
      const register = {
        namespace: this.namespace, names: [...this.handlers.keys()].sort(), concurrency: this.concurrency,
        workerName: `${os.hostname()}/pid-${process.pid}`, sdk: SDK, limits: this.limits,
      };
      call.write({ kind: { case: 'register', value: register } });
    });
  }

  /** @param {Session} session @param {any} message */
  _onMessage(session, message) {
    const { case: kind, value } = message.kind;
    if (kind === 'registered') {
      this.workerId = value.workerId;
      for (const waiter of this._waiters.splice(0)) waiter.resolve();
    } else if (kind === 'assignment') {
      if (this.unanswered < this.concurrency) this._start(session, value);
      else this.queue.push({ session, assignment: value });
    } else if (kind === 'cancel') {
      const key = `${value.jobId}/${value.attempt}`;
      const [reason, text] = REASONS.get(value.reason) ?? ['cancelled', 'the attempt was stopped'];
      const running = this.running.get(key);
      if (running && !running.controller.signal.aborted) {
        running.controller.abort(new AttemptCancelledError(reason, `job ${value.jobId}: ${text}`));
      }
      const queued = this.queue.findIndex((q) => `${q.assignment.jobId}/${q.assignment.attempt}` === key);
      if (queued >= 0) {
        this.queue.splice(queued, 1);
        session.send(outcomeMessage(value.jobId, value.attempt, { case: 'cancelled', value: {} }));
      }
    } else if (kind === 'ack') {
      session.acks.get(`${value.jobId}/${value.attempt}`)?.(value);
    } else if (kind === 'stepAck') {
      session.stepAcks.get(`${value.jobId}/${value.attempt}/${value.name}`)?.(value.recorded);
    }
  }

  /** @param {Session} session @param {any} assignment */
  _start(session, assignment) {
    const key = `${assignment.jobId}/${assignment.attempt}`;
    const controller = new AbortController();
    /** @type {Running} */
    const entry = { controller, session, done: Promise.resolve() };
    this.running.set(key, entry);
    this.unanswered += 1;
    let answered = false;
    const onAnswered = () => {
      if (answered) return;
      answered = true;
      this.unanswered -= 1;
      const next = this.queue.shift();
      if (next && next.session.open && !this.stopping) this._start(next.session, next.assignment);
    };
    entry.done = this._runJob(session, assignment, controller, onAnswered)
      .catch((err) => this.logger.error(`perdure: job ${assignment.jobId} could not be answered`, err))
      .finally(() => {
        this.running.delete(key);
        onAnswered();
      });
  }

  /**
   * @param {Session} session @param {any} a @param {AbortController} controller
   * @param {() => void} onAnswered called once the outcome is sent: the job's slot is free
   */
  async _runJob(session, a, controller, onAnswered) {
    const recorded = new Map(a.steps.filter((/** @type {any} */ s) => s.status === StepStatus.SUCCEEDED)
      .map((/** @type {any} */ s) => [s.name, serde.decodeResult(s.result)]));
    const call = serde.safeDecodeCall(a.payload);
    const ctx = new JobContext({
      jobId: a.jobId, name: a.name, namespace: a.namespace, attempt: a.attempt, maxAttempts: a.maxAttempts,
      parentId: a.parentId, deadline: a.deadline ? timestampDate(a.deadline) : null, kwargs: call.kwargs,
      signal: controller.signal, recorded,
      send: (message) => session.send(message),
      record: (name, outcome) => this._recordStep(session, a.jobId, a.attempt, name, outcome),
    });
    /** @type {JobEvent} */
    const info = { jobId: a.jobId, name: a.name, attempt: a.attempt, maxAttempts: a.maxAttempts };
    /** @type {any} */
    let result;
    /** @type {{case: string, value: any}} */
    let outcome;
    /** @type {import('./handle.js').ErrorInfo | null} */
    let error = null;
    try {
      const handler = this.handlers.get(a.name);
      if (!handler) throw new NonRetryableError(`no handler for ${JSON.stringify(a.name)} in this process`);
      if (call.error) throw call.error;
      await this.emit('job:start', info);
      result = await storage.run(ctx, () => handler(...call.args, ctx));
      let payload;
      try {
        payload = serde.encodeResult(result);
      } catch (err) {
        // It would fail the same way every time: no retry.
        throw new NonRetryableError(`the result of ${JSON.stringify(a.name)} is not JSON-serialisable: ${/** @type {Error} */ (err).message}`);
      }
      outcome = { case: 'success', value: payload };
    } catch (err) {
      const reason = controller.signal.aborted ? /** @type {any} */ (controller.signal.reason) : null;
      if (reason) {
        // Stopped as asked: the sidecar has ended the attempt already, or takes the job back.
        outcome = { case: 'cancelled', value: {} };
        if (reason.reason === 'timeout') {
          error = { type: 'perdure.Timeout', message: 'the attempt exceeded its timeout', traceback: '',
            nonRetryable: false };
        }
      } else {
        error = failure(err);
        outcome = { case: 'failure', value: error };
      }
    }
    const acknowledged = this._sendOutcome(session, a.jobId, a.attempt, outcome);
    onAnswered();
    const ack = await acknowledged;
    if (ack === null || (!ack.recorded && error === null)) return;
    if (outcome.case === 'success') {
      await this.emit('job:success', { ...info, result });
    } else if (error !== null) {
      await this.emit('job:error', { ...info, error });
      if (STATES.get(ack.state) === 'dead') await this.emit('job:dead', { ...info, error });
    }
  }

  /**
   * Send an outcome; resolves with the sidecar's acknowledgement once it is committed, or
   * null if the stream drops first (the sidecar then puts the job back itself).
   * @param {Session} session @param {string} jobId @param {number} attempt @param {{case: string, value: any}} result
   */
  _sendOutcome(session, jobId, attempt, result) {
    if (!session.open) return Promise.resolve(null);
    const key = `${jobId}/${attempt}`;
    return new Promise((resolve) => {
      session.acks.set(key, (ack) => { session.acks.delete(key); resolve(ack); });
      session.send(outcomeMessage(jobId, attempt, result));
    });
  }

  /**
   * Send a step's outcome and wait until the sidecar has committed it (or refused it).
   * @param {Session} session @param {string} jobId @param {number} attempt @param {string} name
   * @param {{result?: any, error?: any}} step
   * @returns {Promise<boolean>}
   */
  _recordStep(session, jobId, attempt, name, step) {
    if (!session.open) return Promise.resolve(false);
    const key = `${jobId}/${attempt}/${name}`;
    const outcome = step.result ? { case: 'result', value: step.result } : { case: 'error', value: step.error };
    return new Promise((resolve) => {
      session.stepAcks.set(key, (recorded) => { session.stepAcks.delete(key); resolve(recorded); });
      session.send({ kind: { case: 'recordStep', value: { jobId, attempt, name, outcome } } });
    });
  }

  /** @param {Session} session */
  _heartbeats(session) {
    for (const [key, running] of this.running) {
      if (running.session !== session || running.controller.signal.aborted) continue;
      const [jobId, attempt] = key.split('/');
      session.send({ kind: { case: 'heartbeat', value: { jobId, attempt: Number(attempt) } } });
    }
  }

  /** The stream is gone and the sidecar has put our jobs back: their answers cannot count any more. */
  _abandon() {
    const session = this.session;
    this.session = null;
    this.workerId = '';
    session?.close();
    this.queue = this.queue.filter((q) => q.session.open);
    for (const running of this.running.values()) {
      if (running.session === session && !running.controller.signal.aborted) {
        running.controller.abort(new AttemptCancelledError('disconnected', 'the stream to the sidecar dropped'));
      }
    }
  }

  /**
   * Let running handlers finish within `grace` seconds, then stop the rest (their signals
   * abort with reason "shutdown"): each is handed back to the sidecar, to run again elsewhere
   * without spending an attempt. Then hang up.
   * @param {number} grace
   */
  async stop(grace) {
    this.stopping = true;
    this._wake?.();
    const session = this.session;
    if (session && this.registered) session.send({ kind: { case: 'drain', value: {} } });
    this.queue = [];
    const all = () => Promise.all([...this.running.values()].map((r) => r.done));
    if (this.running.size) await within(all(), grace);
    if (this.running.size) {
      for (const running of this.running.values()) {
        if (!running.controller.signal.aborted) {
          running.controller.abort(new AttemptCancelledError('shutdown', 'this process is shutting down'));
        }
      }
      // Their answers ("cancelled") still need the stream and their acknowledgements.
      await within(all(), 5);
    }
    if (session && session.open) {
      if (this.registered) session.call.end(); // the sidecar then ends its side
      else session.call.cancel();
      await within(this.done ?? Promise.resolve(), 5);
      if (session.open) session.call.cancel();
    }
    await within(this.done ?? Promise.resolve(), 5);
  }
}

/** @param {string} jobId @param {number} attempt @param {{case: string, value: any}} result */
function outcomeMessage(jobId, attempt, result) {
  return { kind: { case: 'outcome', value: { jobId, attempt, result } } };
}

/**
 * What a handler threw, as the attempt's error.
 * @param {unknown} err
 * @returns {import('./handle.js').ErrorInfo}
 */
function failure(err) {
  const e = /** @type {any} */ (err);
  const isObject = e !== null && typeof e === 'object';
  const type = errorType(err);
  let traceback = isObject && typeof e.stack === 'string' ? e.stack : '';
  if (typeof e?.name === 'string' && e.name !== type && traceback.startsWith(`${e.name}:`)) {
    // `class PaymentDeclined extends Error {}` keeps the name "Error" in its stack: say what it is.
    traceback = type + traceback.slice(e.name.length);
  }
  return {
    type,
    message: isObject && typeof e.message === 'string' ? e.message : String(err),
    traceback,
    nonRetryable: err instanceof NonRetryableError || (isObject && e.nonRetryable === true),
  };
}

/** @param {Promise<unknown>} promise @param {number} seconds */
function within(promise, seconds) {
  /** @type {NodeJS.Timeout | undefined} */
  let timer;
  return Promise.race([
    promise.then(() => true),
    new Promise((resolve) => { timer = setTimeout(() => resolve(false), seconds * 1000); }),
  ]).finally(() => clearTimeout(timer));
}

module.exports = { Worker, SDK, failure };
