'use strict';
/**
 * Enqueue a job inside your own database transaction, so that it exists if and only if the
 * transaction commits. Works with any client that has `query(text, values)` returning
 * `{rows}` (node-postgres's Client, PoolClient):
 *
 *     await client.query('BEGIN');
 *     await client.query('INSERT INTO orders (id) VALUES ($1)', [orderId]);
 *     const jobId = await enqueueInTransaction(client, 'orders:confirm', [orderId], { maxAttempts: 5 });
 *     await client.query('COMMIT');
 *
 * It calls the SQL function perdure.enqueue (migrations/0012_transactional_enqueue.sql) with the
 * SDK's options, checked first. The database must be the one the sidecars use; the role needs
 * EXECUTE on the function and INSERT on Perdure's tables.
 */

const { mergeOptions, sqlOptions } = require('./options.js');

const QUERY = 'SELECT perdure.enqueue($1, $2::jsonb, $3::jsonb, $4::jsonb, $5) AS id';

/**
 * @param {{query: (text: string, values: unknown[]) => Promise<{rows: any[]}>}} client
 * @param {string} name
 * @param {unknown[]} [args]
 * @param {import('./options.js').JobOptions & {kwargs?: Record<string, unknown>, namespace?: string}} [options]
 * @returns {Promise<string>} the job's id (with an idempotency key that exists already, the existing job's)
 */
async function enqueueInTransaction(client, name, args = [], options = {}) {
  const { kwargs = {}, namespace = 'default', ...rest } = options;
  if (!Array.isArray(args)) throw new TypeError('args must be an array');
  const checked = mergeOptions({}, rest); // the SDK's own checks, before any SQL
  let values;
  try {
    values = [name, JSON.stringify(args), JSON.stringify(kwargs), JSON.stringify(sqlOptions(checked)), namespace];
  } catch (err) {
    throw new TypeError(`the arguments of ${JSON.stringify(name)} must be JSON-serialisable: ${/** @type {Error} */ (err).message}`);
  }
  const { rows } = await client.query(QUERY, values);
  return String(rows[0].id);
}

module.exports = { enqueueInTransaction };
