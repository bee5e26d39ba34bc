'use strict';
/**
 * A perdured process started and owned by this Node.js process, for development, examples and
 * tests (in production the sidecar runs beside the app, and `address` points at it).
 * perdured comes with the Python package (`pip install perdure`); it is looked for in
 * $PERDURE_PERDURED, then on PATH, then in this repository's ./.venv.
 */

const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { SidecarUnavailableError } = require('./errors.js');

// The first start of the embedded database runs initdb.
const START_TIMEOUT = 120;

/** The perdured command to run, or null if there is none here. */
function findPerdured() {
  if (process.env.PERDURE_PERDURED) return process.env.PERDURE_PERDURED;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir && isExecutable(path.join(dir, 'perdured'))) return path.join(dir, 'perdured');
  }
  const venv = path.resolve(__dirname, '..', '..', '..', '.venv', 'bin', 'perdured');
  return isExecutable(venv) ? venv : null;
}

/** @param {string} file */
function isExecutable(file) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

class LocalSidecar {
  /** @param {import('node:child_process').ChildProcess} child @param {string} address */
  constructor(child, address) {
    this.child = child;
    this.address = address;
  }

  /**
   * Start perdured on a free loopback port and resolve once it serves. Against `databaseUrl`,
   * or the embedded PostgreSQL kept in `dataDir` (default ./.perdure). It stops with stop(),
   * and by itself if this process dies (it watches its standard input, a pipe from us).
   * @param {{databaseUrl?: string, dataDir?: string, command?: string, args?: string[]}} [options]
   */
  static async start({ databaseUrl, dataDir, command, args = [] } = {}) {
    const perdured = command ?? findPerdured();
    if (!perdured) {
      throw new SidecarUnavailableError('perdured not found: install it (pip install perdure) or set PERDURE_PERDURED');
    }
    const argv = ['--listen', '127.0.0.1:0', '--ready-fd', '3', '--exit-with-stdin', ...args];
    if (databaseUrl) argv.push('--database-url', databaseUrl);
    if (dataDir) argv.push('--data-dir', dataDir);
    const child = spawn(perdured, argv, {
      stdio: ['pipe', 'inherit', 'inherit', 'pipe'],
      env: { PERDURE_LOG_LEVEL: 'warning', ...process.env },
    });
    const ready = /** @type {import('node:stream').Readable} */ (child.stdio[3]);
    const address = await new Promise((resolve, reject) => {
      let text = '';
      const timer = setTimeout(() => fail(`perdured did not start within ${START_TIMEOUT} s`), START_TIMEOUT * 1000);
      const fail = (/** @type {string} */ message) => {
        clearTimeout(timer);
        child.kill('SIGKILL');
        reject(new SidecarUnavailableError(message));
      };
      ready.on('data', (chunk) => {
        text += chunk;
        if (text.includes('\n')) {
          clearTimeout(timer);
          resolve(text.trim());
        }
      });
      child.on('error', (err) => fail(`perdured could not start: ${err.message}`));
      child.on('exit', (code) => {
        if (!text.includes('\n')) fail(`perdured exited with status ${code} before serving; see its log`);
      });
    });
    ready.destroy();
    return new LocalSidecar(child, address);
  }

  /** SIGTERM, then wait (SIGKILL after `timeout` seconds). */
  async stop(timeout = 30) {
    const child = this.child;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), timeout * 1000);
    await exited;
    clearTimeout(timer);
  }
}

module.exports = { LocalSidecar, findPerdured };
