'use strict';
/**
 * Transactional enqueue with node-postgres: a job enqueued inside the application's own
 * transaction exists if and only if that transaction commits.
 *
 *     PERDURE_DATABASE_URL=postgresql://... node examples/transactional_enqueue.js
 *
 * The database must be the one the sidecars use: with $PERDURE_ADDRESS, a sidecar on that
 * database; otherwise the example starts perdured on it.
 */

const { Client } = require('pg');
const { Perdure, enqueueInTransaction } = require('../src');
const { sidecar } = require('./_sidecar.js');

async function main() {
  const databaseUrl = process.env.PERDURE_DATABASE_URL;
  if (!databaseUrl) throw new Error('set PERDURE_DATABASE_URL to the database the sidecars use');
  const local = await sidecar();
  const perdure = new Perdure({ address: local.address });
  /** @type {string[]} */
  const confirmed = [];
  perdure.durable('orders:confirm', async (orderId, ctx) => {
    confirmed.push(orderId);
    return { order: orderId, express: ctx.kwargs.express ?? false };
  });
  await perdure.start();
  const db = new Client({ connectionString: databaseUrl });
  await db.connect();
  try {
    await db.query('CREATE TABLE IF NOT EXISTS example_orders (id text PRIMARY KEY)');

    // Committed: the order and its job both exist, and the job runs.
    await db.query('BEGIN');
    await db.query('INSERT INTO example_orders (id) VALUES ($1) ON CONFLICT DO NOTHING', ['o-1']);
    const kept = await enqueueInTransaction(db, 'orders:confirm', ['o-1'], { kwargs: { express: true }, maxAttempts: 5 });
    await db.query('COMMIT');

    // Rolled back: neither the order nor its job exists.
    await db.query('BEGIN');
    await db.query('INSERT INTO example_orders (id) VALUES ($1) ON CONFLICT DO NOTHING', ['o-2']);
    const lost = await enqueueInTransaction(db, 'orders:confirm', ['o-2']);
    await db.query('ROLLBACK');

    const result = await perdure.handle(kept).result({ timeout: 30 });
    const { rows } = await db.query('SELECT count(*)::int AS n FROM perdure.jobs WHERE id = $1', [lost]);
    console.log(`committed job ${kept}: ${JSON.stringify(result)}`);
    console.log(`rolled-back job ${lost}: ${rows[0].n === 0 ? 'never existed' : 'exists (unexpected)'}`);
    return { kept, lost, result, lostJobs: rows[0].n, confirmed };
  } finally {
    await db.end();
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

module.exports = { main };
