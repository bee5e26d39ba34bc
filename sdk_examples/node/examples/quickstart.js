'use strict';
/**
 * The quick start: a durable function that fails once, is retried, and returns its result.
 *
 *     node examples/quickstart.js
 *
 * Uses the sidecar at $PERDURE_ADDRESS, or starts its own perdured (see _sidecar.js).
 */

const { Perdure } = require('../src');
const { sidecar } = require('./_sidecar.js');

/** @type {Map<string, number>} */
const calls = new Map();

async function main() {
  const local = await sidecar();
  const perdure = new Perdure({ address: local.address });

  const sendEmail = perdure.durable('notifications:email:send', async (to, subject, ctx) => {
    calls.set(to, (calls.get(to) ?? 0) + 1);
    if (ctx.attempt === 1) {
      const error = new Error('the mail server hung up (the first attempt always fails here)');
      error.name = 'ConnectionError';
      throw error;
    }
    return { sent: true, to, subject, attempt: ctx.attempt };
  }, { maxAttempts: 5, backoff: 'exponential', initialDelay: 0.2, maxDelay: 5, timeout: 30, jitter: 0.1 });

  await perdure.start();
  try {
    const handle = await sendEmail('user@example.com', 'Welcome!');
    console.log(`enqueued job ${handle.id}`);
    const result = await handle.result({ timeout: 60 });
    console.log('result:', JSON.stringify(result));
    const details = await handle.details();
    for (const attempt of details.attempts) {
      const error = attempt.error ? ` (${attempt.error.type}: ${attempt.error.message})` : '';
      console.log(`  attempt ${attempt.number}: ${attempt.outcome}${error}`);
    }
    console.log(`status: ${details.status}`);
    return { result, outcomes: details.attempts.map((a) => a.outcome), status: details.status };
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

module.exports = { main, calls };
