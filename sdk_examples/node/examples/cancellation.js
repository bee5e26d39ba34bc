'use strict';
/**
 * A long job that reports progress, keeps its lease alive with heartbeats, and stops cleanly
 * when it is cancelled: the handler's AbortSignal (ctx.signal) aborts, and the worker answers.
 *
 *     node examples/cancellation.js
 */

const { setTimeout: sleep } = require('node:timers/promises');
const { Perdure, JobCancelledError } = require('../src');
const { sidecar } = require('./_sidecar.js');

/** What the handler saw, for the test. */
const seen = { chunks: 0, stoppedBecause: '' };

async function main() {
  const local = await sidecar();
  const perdure = new Perdure({ address: local.address, workerConcurrency: 2 });

  const exportReport = perdure.durable('reports:export', async (reportId, chunks, ctx) => {
    try {
      for (let chunk = 1; chunk <= chunks; chunk++) {
        await sleep(100, undefined, { signal: ctx.signal }); // a real export passes the signal to its I/O
        seen.chunks = chunk;
        ctx.progress(chunk, chunks, `chunk ${chunk} of ${chunks}`);
        ctx.heartbeat(); // extends the attempt's lease at once
      }
      return { reportId, chunks };
    } catch (err) {
      if (ctx.cancelled) seen.stoppedBecause = ctx.signal.reason.reason; // "cancelled", "timeout", ...
      throw err;
    }
  }, { timeout: 300, maxAttempts: 1 });

  await perdure.start();
  try {
    const handle = await exportReport('q3', 1000);
    // Wait until the export is under way, then change our mind.
    while ((await handle.details()).progress === null) await sleep(50);
    console.log(`job ${handle.id} is running; cancelling it`);
    await handle.cancel();
    try {
      await handle.result({ timeout: 30 });
    } catch (err) {
      if (!(err instanceof JobCancelledError)) throw err;
      console.log(`result: cancelled after ${seen.chunks} chunk(s); the handler saw "${seen.stoppedBecause}"`);
    }
    const details = await handle.details();
    return { status: details.status, outcomes: details.attempts.map((a) => a.outcome), ...seen };
  } finally {
    await perdure.stop();
    await local.stop();
  }
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exitCode = 1;
  });
}

module.exports = { main, seen };
