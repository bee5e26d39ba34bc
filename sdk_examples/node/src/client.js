'use strict';
/** `Perdure`: the client. Turns functions durable, enqueues calls, serves this process's handlers. */

const grpc = require('@grpc/grpc-js');
const { JobsClient, WorkersClient } = require('./grpc.js');
const serde = require('./serde.js');
const { mergeOptions, enqueueRequest, limitsMessage, LIMITS } = require('./options.js');
const { JobHandle } = require('./handle.js');
const { Worker } = require('./worker.js');
const {
  PerdureError, NotStartedError, SidecarUnavailableError, JobNotFoundError, InvalidArgumentError,
} = require('./errors.js');

const EVENTS = ['job:start', 'job:success', 'job:error', 'job:dead'];

/**
 * Adds `authorization: Bearer <token>` to every call, unary or streaming.
 * @param {string} token
 * @returns {grpc.Interceptor}
 */
function bearer(token) {
  return (options, nextCall) => new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      metadata.set('authorization', `Bearer ${token}`);
      next(metadata, listener);
    },
  });
}
const MAX_MESSAGE = 64 * 1024 * 1024;
const ENQUEUE_BATCH = 1000; // jobs per EnqueueBatch call of enqueueMany
const ENQUEUE_BATCHES_IN_FLIGHT = 2;
const DEFAULT_ADDRESS = '127.0.0.1:7433';

/**
 * @typedef {object} PerdureOptions
 * @property {string} [address] the sidecar, host:port (default: $PERDURE_ADDRESS, else 127.0.0.1:7433)
 * @property {string} [namespace] default "default"; nothing crosses namespaces
 * @property {number} [workerConcurrency] handlers of this process running at once (default 10)
 * @property {number} [shutdownGrace] seconds running handlers get on stop() before they are stopped (default 10)
 * @property {number} [heartbeatInterval] seconds between heartbeats sent for every running job
 *   (default 0: none; the sidecar renews the leases of what its live streams hold by itself)
 * @property {grpc.ChannelCredentials} [credentials] default insecure (a sidecar on loopback); for TLS,
 *   `grpc.credentials.createSsl(ca, key, cert)`
 * @property {string} [token] sent with every call as `authorization: Bearer <token>`, for a sidecar
 *   configured with tokens (default: $PERDURE_TOKEN)
 * @property {Pick<Console, 'warn' | 'error'>} [logger] default console
 */

/**
 * A durable function: calling it enqueues a job and resolves to its JobHandle.
 * @typedef {((...args: any[]) => Promise<JobHandle>) & {
 *   durableName: string,
 *   handler: Function,
 *   options: (overrides: import('./options.js').JobOptions & {kwargs?: Record<string, unknown>})
 *     => (...args: any[]) => Promise<JobHandle>,
 * }} DurableFunction
 */

/**
 * Durable execution through a perdured sidecar.
 *
 *     const perdure = new Perdure({ address: '127.0.0.1:7433' });
 *     const sendEmail = perdure.durable('emails:send', async (to, subject, ctx) => { ... }, { maxAttempts: 5 });
 *     await perdure.start();
 *     const handle = await sendEmail('user@example.com', 'Welcome!');
 *     console.log(await handle.result());
 *     await perdure.stop();
 */
class Perdure {
  /** @param {PerdureOptions} [options] */
  constructor({
    address, namespace = 'default', workerConcurrency = 10, shutdownGrace = 10, heartbeatInterval = 0,
    credentials, token, logger,
  } = {}) {
    if (!Number.isInteger(workerConcurrency) || workerConcurrency < 1) {
      throw new RangeError(`workerConcurrency must be an integer of at least 1, got ${workerConcurrency}`);
    }
    if (typeof namespace !== 'string' || namespace === '') {
      throw new TypeError(`namespace must be a non-empty string, got ${JSON.stringify(namespace)}`);
    }
    if (typeof heartbeatInterval !== 'number' || !(heartbeatInterval >= 0)) {
      throw new RangeError(`heartbeatInterval must be a number of seconds, not negative, got ${heartbeatInterval}`);
    }
    this.address = address || process.env.PERDURE_ADDRESS || DEFAULT_ADDRESS;
    this.namespace = namespace;
    this.workerConcurrency = workerConcurrency;
    this.shutdownGrace = shutdownGrace;
    this.heartbeatInterval = heartbeatInterval;
    /** @private */ this._credentials = credentials ?? grpc.credentials.createInsecure();
    /** @private */ this._token = token ?? process.env.PERDURE_TOKEN ?? '';
    /** @private */ this._logger = logger ?? console;
    /** @private @type {Map<string, {handler: Function, limits: any}>} */
    this._functions = new Map();
    /** @private @type {Map<string, Function[]>} */
    this._callbacks = new Map(EVENTS.map((e) => [e, []]));
    /** @private @type {any} */ this._jobs = null;
    /** @private @type {Worker | null} */ this._worker = null;
  }

  // -- lifetime -----------------------------------------------------------------------------

  /** Connect; a process with durable functions also starts serving them. */
  async start() {
    if (this._jobs) return;
    const interceptors = this._token ? [bearer(this._token)] : [];
    this._jobs = new JobsClient(this.address, this._credentials, {
      'grpc.max_receive_message_length': MAX_MESSAGE, 'grpc.max_send_message_length': MAX_MESSAGE, interceptors,
    });
    if (this._functions.size) {
      // Only a process with handlers takes work, and only for the names it has.
      const workers = new WorkersClient(this.address, this._credentials, {
        channelOverride: this._jobs.getChannel(), interceptors,
      });
      /** @type {Map<string, Function>} */
      const handlers = new Map([...this._functions].map(([name, fn]) => [name, fn.handler]));
      const limits = [...this._functions].map(([, fn]) => fn.limits).filter(Boolean);
      this._worker = new Worker({
        workers, namespace: this.namespace, handlers, limits, concurrency: this.workerConcurrency,
        heartbeatInterval: this.heartbeatInterval, emit: (event, info) => this._emit(event, info), logger: this._logger,
      });
      this._worker.start();
    }
  }

  /**
   * Stop: running handlers get `shutdownGrace` seconds, then their signals abort and their
   * jobs go back to the sidecar (to run again, without spending an attempt); then disconnect.
   */
  async stop() {
    const worker = this._worker;
    this._worker = null;
    if (worker) await worker.stop(this.shutdownGrace);
    if (this._jobs) {
      this._jobs.close();
      this._jobs = null;
    }
  }

  /**
   * Resolves once the worker stream is registered with the sidecar (useful in tests and demos).
   * @param {{timeout?: number}} [options] seconds, default 30
   */
  async waitUntilServing({ timeout = 30 } = {}) {
    if (!this._worker) throw new PerdureError('this process serves no durable functions (or is not started)');
    /** @type {NodeJS.Timeout | undefined} */
    let timer;
    const expired = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new SidecarUnavailableError(
        `the worker did not register with perdured at ${this.address} within ${timeout} s`)), timeout * 1000);
    });
    try {
      await Promise.race([this._worker.untilRegistered(), expired]);
    } finally {
      clearTimeout(timer);
    }
  }

  // -- durable functions --------------------------------------------------------------------

  /**
   * Make `handler` durable under `name`: the returned function enqueues a job and resolves to
   * its JobHandle; the handler runs later, in whichever process serves `name`, as
   * `handler(...args, ctx)` with the job's JobContext last.
   *
   * `options` are the job options (defaults for every call, which `fn.options({...})` may
   * override) and the function's limits, held across every sidecar: `concurrency`,
   * `keyConcurrency`, `rateLimit` and `keyRateLimit` ({limit, per: seconds}).
   * @param {string} name
   * @param {Function} handler
   * @param {import('./options.js').JobOptions & import('./options.js').FunctionLimits} [options]
   * @returns {DurableFunction}
   */
  durable(name, handler, options = {}) {
    if (typeof name !== 'string' || !name.trim()) {
      throw new TypeError(`a durable function needs a non-empty name, got ${JSON.stringify(name)}`);
    }
    if (typeof handler !== 'function') throw new TypeError(`durable(${JSON.stringify(name)}) needs a handler function`);
    if (this._functions.has(name)) throw new Error(`a durable function named ${JSON.stringify(name)} is already registered`);
    if (this._jobs) throw new PerdureError(`define durable function ${JSON.stringify(name)} before starting Perdure`);
    const defaults = mergeOptions({}, /** @type {Record<string, unknown>} */ (options), LIMITS);
    const limits = limitsMessage(name, /** @type {any} */ (options));
    this._functions.set(name, { handler, limits });
    const call = (/** @type {any} */ jobOptions, /** @type {any} */ kwargs) => (/** @type {any[]} */ ...args) =>
      this._enqueue(name, args, kwargs, jobOptions);
    const fn = /** @type {DurableFunction} */ (/** @type {unknown} */ (call(defaults, undefined)));
    fn.durableName = name;
    fn.handler = handler;
    fn.options = (overrides) => {
      const { kwargs, ...rest } = overrides ?? {};
      return call(mergeOptions(defaults, rest), kwargs);
    };
    return fn;
  }

  /**
   * Enqueue a call of `name` by name: its handler may live in another process or language.
   * `options` are job options, plus `kwargs` for handlers that take keyword arguments (Python).
   * @param {string} name
   * @param {unknown[]} [args]
   * @param {import('./options.js').JobOptions & {kwargs?: Record<string, unknown>}} [options]
   * @returns {Promise<JobHandle>}
   */
  async enqueue(name, args = [], options = {}) {
    if (!Array.isArray(args)) throw new TypeError('enqueue(name, args, options): args must be an array');
    const { kwargs, ...rest } = options;
    return this._enqueue(name, args, kwargs, mergeOptions({}, rest));
  }

  /**
   * Enqueue one job of `name` per item of `calls` (each an array of positional arguments), all
   * with the same options, in batches of up to 1000 jobs: each batch is one `EnqueueBatch` call,
   * one statement and one commit, all of it or none; two are in flight at once. The options go
   * once per batch (`common`), each job carrying only its payload. If a batch fails, those not
   * yet sent are not, and its error is thrown. Every call is checked before any is sent.
   * Resolves to the handles, in order.
   * @param {string} name
   * @param {Iterable<unknown[]>} calls
   * @param {import('./options.js').JobOptions} [options]
   * @returns {Promise<JobHandle[]>}
   */
  async enqueueMany(name, calls, options = {}) {
    const checked = mergeOptions({}, options);
    if (checked.idempotencyKey) {
      throw new TypeError('enqueueMany gives every job the same options: an idempotencyKey would make them one job');
    }
    const payloads = Array.from(calls, (args) => {
      if (!Array.isArray(args)) throw new TypeError(`each call is an array of positional arguments; got ${JSON.stringify(args)}`);
      return serde.encodeCall(name, args, undefined);
    });
    const common = enqueueRequest(checked, { namespace: this.namespace, name });
    /** @type {JobHandle[][]} */
    const handles = [];
    let next = 0;
    const sendRest = async () => {
      while (next < payloads.length) {
        const start = next;
        next += ENQUEUE_BATCH;
        const jobs = payloads.slice(start, next).map((payload) => ({ payload }));
        let response;
        try {
          response = await this._call('enqueueBatch', { jobs, common, brief: true });
        } catch (err) {
          next = payloads.length; // the batches not yet sent are not
          throw err;
        }
        handles[start / ENQUEUE_BATCH] = response.results.map(
          (/** @type {any} */ r) => new JobHandle(this, r.job.id, { name, deduplicated: r.deduplicated }));
      }
    };
    await Promise.all(Array.from({ length: ENQUEUE_BATCHES_IN_FLIGHT }, sendRest));
    return handles.flat();
  }

  /**
   * A handle on an existing job, e.g. one whose id was stored earlier.
   * @param {string} jobId
   */
  handle(jobId) {
    return new JobHandle(this, String(jobId));
  }

  /**
   * Emit the durable event `name` with a JSON payload; resolves to how many waiting jobs it woke.
   * @param {string} name @param {unknown} [payload]
   * @returns {Promise<number>}
   */
  async emitEvent(name, payload = null) {
    if (typeof name !== 'string' || !name) throw new TypeError('an event needs a non-empty name');
    const response = await this._call('emitEvent', {
      namespace: this.namespace, name, payload: serde.encodeResult(payload),
    });
    return response.woken;
  }

  /**
   * Call `callback(event)` (may be async) when a handler of this process starts, succeeds,
   * fails an attempt (job:error) or fails for good (job:dead).
   * @param {'job:start' | 'job:success' | 'job:error' | 'job:dead'} event
   * @param {(info: import('./worker.js').JobEvent) => unknown} callback
   */
  on(event, callback) {
    const callbacks = this._callbacks.get(event);
    if (!callbacks) throw new RangeError(`unknown event ${JSON.stringify(event)}; expected one of ${EVENTS.join(', ')}`);
    callbacks.push(callback);
  }

  // -- plumbing -----------------------------------------------------------------------------

  /**
   * @private
   * @param {string} name @param {unknown[]} args @param {Record<string, unknown> | undefined} kwargs
   * @param {import('./options.js').JobOptions} options
   */
  async _enqueue(name, args, kwargs, options) {
    const payload = serde.encodeCall(name, args, kwargs);
    const request = enqueueRequest(options, { namespace: this.namespace, name, payload });
    request.brief = true; // the id is all that is read
    const response = await this._call('enqueue', request);
    return new JobHandle(this, response.job.id, { name, deduplicated: response.deduplicated });
  }

  /**
   * One unary call; waits for the sidecar to be reachable within the deadline.
   * @param {string} method @param {object} request @param {number} [timeout] seconds
   * @returns {Promise<any>}
   */
  _call(method, request, timeout = 30) {
    const jobs = this._jobs;
    if (!jobs) return Promise.reject(new NotStartedError());
    return new Promise((resolve, reject) => {
      jobs[method](request, new grpc.Metadata({ waitForReady: true }), { deadline: Date.now() + timeout * 1000 },
        (/** @type {any} */ err, /** @type {any} */ response) => (err ? reject(translate(err)) : resolve(response)));
    });
  }

  /** @private @param {string} event @param {any} info */
  async _emit(event, info) {
    for (const callback of this._callbacks.get(event) ?? []) {
      try {
        await callback(info);
      } catch (err) { // a broken callback must not fail the job
        this._logger.warn(`perdure: callback for ${event} failed:`, err);
      }
    }
  }
}

/** @param {grpc.ServiceError} err */
function translate(err) {
  const detail = err.details ?? '';
  switch (err.code) {
    case grpc.status.INVALID_ARGUMENT: return new InvalidArgumentError(detail);
    case grpc.status.NOT_FOUND: return new JobNotFoundError(detail);
    case grpc.status.UNAVAILABLE:
    case grpc.status.DEADLINE_EXCEEDED:
      return new SidecarUnavailableError(`perdured is unavailable (${grpc.status[err.code]}): ${detail}`);
    default: return new PerdureError(`${grpc.status[err.code]}: ${detail}`);
  }
}

module.exports = { Perdure, DEFAULT_ADDRESS };
