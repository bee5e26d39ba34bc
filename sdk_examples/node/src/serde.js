'use strict';
/**
 * Arguments and results on the wire, as every Perdure SDK reads them: JSON (encoding "json"),
 * call arguments as the object {"args": [...], "kwargs": {...}} (kwargs only when there are some).
 */

const JSON_ENCODING = 'json';
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * @param {string} name
 * @param {unknown[]} args
 * @param {Record<string, unknown>} [kwargs]
 * @returns {{data: Uint8Array, encoding: string}}
 */
function encodeCall(name, args, kwargs) {
  /** @type {{args: unknown[], kwargs?: Record<string, unknown>}} */
  const document = { args: Array.from(args) };
  if (kwargs && Object.keys(kwargs).length > 0) document.kwargs = kwargs;
  let text;
  try {
    text = JSON.stringify(document);
  } catch (err) {
    throw new TypeError(`the arguments of ${JSON.stringify(name)} must be JSON-serialisable: ${messageOf(err)}`);
  }
  return { data: encoder.encode(text), encoding: JSON_ENCODING };
}

/**
 * @param {{data: Uint8Array, encoding: string} | undefined} payload
 * @returns {{args: unknown[], kwargs: Record<string, unknown>}}
 */
function decodeCall(payload) {
  if (!payload || payload.data.length === 0) return { args: [], kwargs: {} };
  if (payload.encoding !== '' && payload.encoding !== JSON_ENCODING) {
    return { args: [Buffer.from(payload.data)], kwargs: {} };
  }
  const document = JSON.parse(decoder.decode(payload.data));
  if (document !== null && typeof document === 'object' && !Array.isArray(document)
      && ('args' in document || 'kwargs' in document)) {
    return { args: Array.from(document.args ?? []), kwargs: { ...(document.kwargs ?? {}) } };
  }
  // Another producer sent a bare value: it is the single argument.
  return { args: [document], kwargs: {} };
}

/**
 * decodeCall that reports bad bytes as the error to fail the attempt with, instead of throwing.
 * @param {{data: Uint8Array, encoding: string} | undefined} payload
 * @returns {{args: unknown[], kwargs: Record<string, unknown>, error?: Error}}
 */
function safeDecodeCall(payload) {
  try {
    return decodeCall(payload);
  } catch (err) {
    return { args: [], kwargs: {}, error: new TypeError(`the job's arguments are not valid JSON: ${messageOf(err)}`) };
  }
}

/**
 * A handler's result (or a step's) as a payload; `undefined` becomes null.
 * @param {unknown} value
 */
function encodeResult(value) {
  const text = JSON.stringify(value === undefined ? null : value);
  if (text === undefined) throw new TypeError(`a ${typeof value} is not JSON-serialisable`);
  return { data: encoder.encode(text), encoding: JSON_ENCODING };
}

/** @param {{data: Uint8Array, encoding: string} | undefined} payload */
function decodeResult(payload) {
  if (!payload) return null;
  if (payload.encoding !== '' && payload.encoding !== JSON_ENCODING) return Buffer.from(payload.data);
  return payload.data.length ? JSON.parse(decoder.decode(payload.data)) : null;
}

/** @param {unknown} err */
function messageOf(err) {
  return err instanceof Error ? err.message : String(err);
}

module.exports = { JSON_ENCODING, encodeCall, decodeCall, safeDecodeCall, encodeResult, decodeResult };
