#!/usr/bin/env node
'use strict';
/**
 * The Node.js SDK's conformance driver: serves the conformance functions, or runs a
 * scenario's client side, speaking the protocol in conformance/README.md (repository root).
 *
 *     node conformance/driver.js serve --address HOST:PORT --namespace NS
 *     node conformance/driver.js run --address HOST:PORT --namespace NS < scenario.json
 */

const { setTimeout: sleep } = require('node:timers/promises');
const { parseArgs } = require('node:util');
const { Perdure, NonRetryableError, JobDeadError, JobCancelledError } = require('../src');

class ConformanceError extends Error {}

/** @param {string} event @param {Record<string, unknown>} [fields] */
function emit(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
}

/** @param {Perdure} perdure */
function define(perdure) {
  /** @param {string} name @param {(ctx: any, ...args: any[]) => Promise<unknown>} fn */
  const traced = (name, fn) => perdure.durable(name, async (...args) => {
    const ctx = args.pop();
    emit('started', { job_id: ctx.jobId, function: name, attempt: ctx.attempt });
    try {
      return await fn(ctx, ...args);
    } catch (err) {
      if (ctx.cancelled) {
        emit('stopped', { job_id: ctx.jobId, function: name, attempt: ctx.attempt, reason: ctx.signal.reason.reason });
      }
      throw err;
    }
  });

  traced('conformance:echo', async (ctx, ...args) => ({ args, kwargs: ctx.kwargs }));
  traced('conformance:flaky', async (ctx, failures) => {
    if (ctx.attempt <= failures) throw new ConformanceError(`attempt ${ctx.attempt} fails`);
    return { attempt: ctx.attempt };
  });
  traced('conformance:fail', async (ctx, message) => { throw new ConformanceError(message); });
  traced('conformance:reject', async (ctx, message) => { throw new NonRetryableError(message); });
  traced('conformance:wait_for_cancel', async (ctx) => {
    ctx.progress(0, 1, 'started');
    await sleep(60_000, undefined, { signal: ctx.signal });
    return 'not stopped';
  });
  traced('conformance:sleep', async (ctx, seconds) => {
    await sleep(seconds * 1000, undefined, { signal: ctx.signal });
    return 'slept';
  });
}

/** @param {string} address @param {string} namespace */
async function serve(address, namespace) {
  const perdure = new Perdure({ address, namespace, workerConcurrency: 4, shutdownGrace: 2 });
  define(perdure);
  await perdure.start();
  await perdure.waitUntilServing();
  emit('serving');
  // Until the harness closes our input (or stops us).
  await new Promise((resolve) => {
    process.stdin.on('end', resolve).on('close', resolve).resume();
    process.once('SIGTERM', resolve);
  });
  await perdure.stop();
  process.stdin.destroy();
}

const OPTIONS = {
  max_attempts: 'maxAttempts', backoff: 'backoff', initial_delay: 'initialDelay', max_delay: 'maxDelay',
  jitter: 'jitter', timeout: 'timeout', idempotency_key: 'idempotencyKey', delay: 'delay', priority: 'priority',
  labels: 'labels', concurrency_key: 'concurrencyKey', start_within: 'startWithin', max_duration: 'maxDuration',
};

/** @param {string} address @param {string} namespace @param {any} scenario */
async function run(address, namespace, scenario) {
  const { call } = scenario;
  /** @type {Record<string, unknown>} */
  const options = { kwargs: call.kwargs ?? {} };
  for (const [key, value] of Object.entries(call.options ?? {})) {
    options[/** @type {keyof typeof OPTIONS} */ (OPTIONS)[key] ?? key] = value;
  }
  const perdure = new Perdure({ address, namespace });
  await perdure.start();
  try {
    const handle = await perdure.enqueue(call.function, call.args ?? [], options);
    /** @type {Record<string, any>} */
    const report = { job_id: handle.id, deduplicated: [handle.deduplicated] };
    if (scenario.action === 'enqueue_twice') {
      const again = await perdure.enqueue(call.function, call.args ?? [], options);
      report.deduplicated.push(again.deduplicated);
      report.same_job = again.id === handle.id;
    } else if (scenario.action === 'cancel_when_started') {
      // The handler reports progress once it runs.
      for (let i = 0; i < 1500 && (await handle.details()).progress === null; i++) await sleep(20);
      await handle.cancel();
    }
    try {
      Object.assign(report, { status: 'success', result: await handle.result({ timeout: 60 }) });
    } catch (err) {
      if (!(err instanceof JobDeadError || err instanceof JobCancelledError)) throw err;
      Object.assign(report, { status: err instanceof JobDeadError ? 'dead' : 'cancelled',
        error: { type: err.errorType, message: err.errorMessage } });
    }
    const details = await handle.details();
    report.attempts = details.attempts.map((a) => a.outcome);
    report.attempt_errors = details.attempts.map((a) => (a.error ? { type: a.error.type, message: a.error.message } : null));
    return report;
  } finally {
    await perdure.stop();
  }
}

async function main() {
  const { positionals, values } = parseArgs({
    allowPositionals: true,
    options: { address: { type: 'string' }, namespace: { type: 'string' } },
  });
  const [mode] = positionals;
  if (!['serve', 'run'].includes(mode) || !values.address || !values.namespace) {
    throw new Error('usage: driver.js serve|run --address HOST:PORT --namespace NS');
  }
  if (mode === 'serve') return serve(values.address, values.namespace);
  let input = '';
  for await (const chunk of process.stdin) input += chunk;
  const report = await run(values.address, values.namespace, JSON.parse(input));
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
