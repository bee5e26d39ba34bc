#!/usr/bin/env node
'use strict';
/**
 * A Node.js worker for tests/polyglot (test_node_reconnect.py, test_node_worker.py): it serves
 * two functions through a perdured sidecar and leaves files in a directory it shares with the
 * test, so that the test can follow it while it kills and restarts the sidecar, or holds a job.
 *
 *     node node_reconnect_worker.js --address HOST:PORT --dir DIR --concurrency N
 *
 * Functions:
 *     reconnect:hold(token)   runs until release-<token> exists in DIR (or its signal aborts);
 *                             run again (a later attempt), it returns at once
 *     reconnect:echo(value)   returns at once
 * Both return {..., pid}: the test knows which process ran them.
 *
 * Files written in DIR (each appears whole: written aside, then renamed):
 *     ready-<pid>              the worker stream is registered, jobs can reach this process
 *     started-<token>-<pid>    a reconnect:hold handler started for <token> in this process
 * Files read in DIR:
 *     release-<token>          reconnect:hold returns once it exists
 */

const fs = require('node:fs');
const path = require('node:path');
const { setTimeout: sleep } = require('node:timers/promises');
const { parseArgs } = require('node:util');
const { Perdure } = require('../../sdk_examples/node/src');

const POLL = 20; // milliseconds between looks at a release file

/** Create `name` in `dir` atomically, so that the test never reads it half written. */
function mark(dir, name) {
  const aside = path.join(dir, `.${name}.${process.pid}.tmp`);
  fs.writeFileSync(aside, '');
  fs.renameSync(aside, path.join(dir, name));
}

async function main() {
  const { values } = parseArgs({
    options: { address: { type: 'string' }, dir: { type: 'string' }, concurrency: { type: 'string' } },
  });
  if (!values.address || !values.dir || !values.concurrency) {
    throw new Error('usage: node_reconnect_worker.js --address HOST:PORT --dir DIR --concurrency N');
  }
  const dir = values.dir;
  const perdure = new Perdure({ address: values.address, workerConcurrency: Number(values.concurrency), shutdownGrace: 1 });

  perdure.durable('reconnect:hold', async (token, ctx) => {
    mark(dir, `started-${token}-${process.pid}`);
    while (ctx.attempt === 1 && !fs.existsSync(path.join(dir, `release-${token}`))) {
      await sleep(POLL, undefined, { signal: ctx.signal });
    }
    return { token, pid: process.pid };
  });
  perdure.durable('reconnect:echo', async (value) => ({ value, pid: process.pid }));

  await perdure.start();
  await perdure.waitUntilServing();
  mark(dir, `ready-${process.pid}`);
  await new Promise((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await perdure.stop();
}

main().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
