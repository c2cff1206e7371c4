// Shared by the real-browser tests (flows.mjs: the link pages, console.mjs: the staff console):
// the output (`ok - ` / `FAIL - ` / `note - ` lines and the final `N passed, M failed`), the time
// limit, the daemon and its CLI, the .eml files of the file outbox, and Chromium's start.
//
// One test per node process: the counters, the daemons and the browser profiles are this
// module's own state.

import { chromium } from 'playwright-core';
import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..');
export const BIN = process.env.INVITED_BIN || path.join(REPO, 'target', 'debug', 'invited');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const ARTIFACTS = path.resolve(
  process.env.ARTIFACTS_DIR || path.join(REPO, 'target', 'browser-artifacts'),
);
// The README's screenshots are tracked files: a test run writes its copies beside the other
// artifacts, and only `UPDATE_SCREENSHOTS=1 tests/browser/run` replaces docs/screenshots/.
export const SHOTS = process.env.UPDATE_SCREENSHOTS === '1'
  ? path.join(REPO, 'docs', 'screenshots')
  : path.join(ARTIFACTS, 'screenshots');
export const STEP_TIMEOUT_MS = 20000;
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const started = Date.now();
let passed = 0;
let failed = 0;
let finished = false;
let stopping = false; // the time limit or a signal: no more checks from the flows

// ---------------------------------------------------------------------------------------------
// Checks and output

export function check(name, ok, detail = '') {
  if (finished || stopping) return ok;
  if (ok) {
    passed++;
    console.log(`ok - ${name}`);
  } else {
    failed++;
    console.log(`FAIL - ${name}${detail ? `: ${detail}` : ''}`);
  }
  return ok;
}

export function note(text) {
  if (!finished && !stopping) console.log(`note - ${text}`);
}

export function say(text) {
  if (!finished && !stopping) console.log(text);
}

export const counts = () => ({ passed, failed });

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const short = (v) => {
  const s = typeof v === 'string' ? v : JSON.stringify(v);
  return s && s.length > 300 ? `${s.slice(0, 300)}…` : s;
};

export async function waitFor(what, fn, timeout = STEP_TIMEOUT_MS) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) {
      throw new Error(`timed out waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`);
    }
    await sleep(100);
  }
}

// Runs `fn`; an exception becomes one FAIL line naming the phase.
export async function phase(name, fn) {
  try {
    await fn();
  } catch (e) {
    check(`${name} ran to its end`, false, e && e.stack ? e.stack.split('\n').slice(0, 3).join(' | ') : String(e));
  }
}

// ---------------------------------------------------------------------------------------------
// Mail: the .eml files a file outbox holds

function decodeBody(body, cte) {
  const enc = (cte || '7bit').trim().toLowerCase();
  if (enc === 'base64') return Buffer.from(body.replace(/[^A-Za-z0-9+/=]/g, ''), 'base64').toString('utf8');
  if (enc === 'quoted-printable') {
    const bytes = [];
    const s = body.replace(/=\r?\n/g, '');
    for (let i = 0; i < s.length; i++) {
      if (s[i] === '=' && /^[0-9A-Fa-f]{2}$/.test(s.slice(i + 1, i + 3))) {
        bytes.push(parseInt(s.slice(i + 1, i + 3), 16));
        i += 2;
      } else {
        bytes.push(...Buffer.from(s[i], 'utf8'));
      }
    }
    return Buffer.from(bytes).toString('utf8');
  }
  return body;
}

function parseHeaders(head) {
  const h = {};
  for (const line of head.replace(/\r?\n[ \t]+/g, ' ').split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0) h[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  return h;
}

function splitEntity(raw) {
  const m = raw.match(/\r?\n\r?\n/);
  if (!m) return { headers: parseHeaders(raw), body: '' };
  return { headers: parseHeaders(raw.slice(0, m.index)), body: raw.slice(m.index + m[0].length) };
}

// Collects the decoded text/plain and text/html parts of a (possibly multipart) entity.
function collectParts(entity, out) {
  const ct = entity.headers['content-type'] || 'text/plain';
  const b = ct.match(/boundary="?([^";]+)"?/i);
  if (/^multipart\//i.test(ct) && b) {
    const pieces = entity.body.split(`--${b[1]}`);
    for (const p of pieces.slice(1)) {
      if (p.startsWith('--')) break;
      collectParts(splitEntity(p.replace(/^\r?\n/, '')), out);
    }
  } else if (/^text\/plain/i.test(ct)) {
    out.text += decodeBody(entity.body, entity.headers['content-transfer-encoding']);
  } else if (/^text\/html/i.test(ct)) {
    out.html += decodeBody(entity.body, entity.headers['content-transfer-encoding']);
  }
}

const addr = (v) => ((v || '').match(/<([^>]+)>/) || [null, (v || '').trim()])[1];

export function parseEml(file) {
  const raw = fs.readFileSync(file, 'latin1'); // bytes as-is; parts decode to UTF-8 themselves
  const top = splitEntity(raw);
  const out = { text: '', html: '' };
  collectParts(top, out);
  const m = out.text.match(/\/t\/[A-Za-z0-9_-]+/);
  const u = (top.headers['list-unsubscribe'] || '').match(/\/u\/[A-Za-z0-9_-]+/);
  return {
    file,
    to: addr(top.headers.to).toLowerCase(),
    replyTo: addr(top.headers['reply-to']),
    messageId: addr(top.headers['message-id']),
    autoSubmitted: top.headers['auto-submitted'] || '',
    text: out.text,
    html: out.html,
    link: m ? m[0] : null,
    unsubscribe: u ? u[0] : null, // the List-Unsubscribe link (invitations and reminders)
  };
}

// ---------------------------------------------------------------------------------------------
// The daemon, its config and its CLI

// The config every browser test's daemon starts from (paths relative to its temp dir); the
// console's listener on a free loopback port with `withConsole`, another `[mail.outbound]` body with
// `outbound`.
export function configText({ outbound = 'transport = "file"\ndir = "outbox"', withConsole = false } = {}) {
  return `
[store]
path = "store"
cache_capacity = 8000000
[http]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:1"
[admin]
socket = "admin.sock"
${withConsole ? '[console]\nlisten = "127.0.0.1:0"\n' : ''}[keys]
active = "k1"
files = { k1 = "keys/k1.key" }
[mail]
from = "Contoso Distribution <partners@invited.test>"
reply_to = "replies@invited.test"
default_locale = "en-US"
[mail.outbound]
${outbound}
max_age = "5d"
[mail.inbound]
source = "maildir"
dir = "inbox"
poll_interval = "100ms"
trusted_authserv_id = "mx.invited.test"
[policy]
invitation_ttl = "14d"
verification_ttl = "7d"
reminder_after = "10d"
reply_authorize = "dmarc"
timer_interval = "100ms"
[[providers]]
id = "contoso-kr"
name = "Contoso Distribution Korea"
email = "ops@contoso.test"
markets = ["KR"]
[[providers]]
id = "contoso-jp"
name = "Contoso Distribution Japan"
email = "jp-ops@contoso.test"
markets = ["JP"]
`;
}

const daemons = new Set();

export class Daemon {
  // `configText` names its paths relative to the temp dir: store, admin.sock, keys/, outbox,
  // inbox.
  constructor(configText, prefix = 'invited-browser-') {
    this.configText = configText;
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    this.config = path.join(this.dir, 'invited.toml');
    this.outbox = path.join(this.dir, 'outbox');
    this.inbox = path.join(this.dir, 'inbox');
    this.socket = path.join(this.dir, 'admin.sock');
    this.log = path.join(this.dir, 'daemon.log');
    this.proc = null;
    this.exited = null;
    this.replySeq = 0;
  }

  start() {
    fs.writeFileSync(this.config, this.configText);
    const out = fs.openSync(path.join(this.dir, 'daemon.out'), 'a');
    const err = fs.openSync(this.log, 'a');
    this.proc = spawn(BIN, ['serve', '--config', this.config], { stdio: ['ignore', out, err] });
    daemons.add(this);
    fs.closeSync(out);
    fs.closeSync(err);
    this.proc.on('exit', (code, signal) => {
      this.exited = { code, signal };
    });
    this.proc.on('error', (e) => {
      this.exited = { error: e.message };
    });
  }

  // `invited --config FILE ARGS...`; `input`, if given, is written to its standard input.
  cli(args, input) {
    return new Promise((resolve) => {
      const child = execFile(
        BIN,
        ['--config', this.config, ...args],
        { timeout: STEP_TIMEOUT_MS, maxBuffer: 64 * 1024 * 1024 },
        (error, stdout, stderr) => resolve({ ok: !error, stdout, stderr }),
      );
      if (input !== undefined) child.stdin.end(input);
    });
  }

  async json(...args) {
    const r = await this.cli(['--json', ...args]);
    if (!r.ok) throw new Error(`invited ${args.join(' ')} failed: ${r.stderr}${r.stdout}`);
    try {
      return JSON.parse(r.stdout);
    } catch (e) {
      throw new Error(`invited ${args.join(' ')}: bad JSON (${e.message}): ${short(r.stdout)}`);
    }
  }

  show(id) {
    return this.json('show', id);
  }

  async stateOf(id) {
    return (await this.show(id)).state;
  }

  async waitState(id, state) {
    let last;
    try {
      await waitFor(`${id} to become ${state}`, async () => (last = await this.stateOf(id)) === state);
    } catch {
      /* reported by the caller's check */
    }
    return last;
  }

  // Waits until the admin socket answers a CLI call (the daemon is up).
  async ready(timeout = 30000) {
    await waitFor('the admin socket', async () => {
      if (this.exited) throw new Error(`daemon exited early: ${JSON.stringify(this.exited)}`);
      return (await this.cli(['--json', 'list', 'invitations'])).ok;
    }, timeout);
  }

  // GET /v1/status on the admin socket (the bound addresses: "http", "console").
  status() {
    return new Promise((resolve, reject) => {
      const req = http.request({ socketPath: this.socket, path: '/v1/status', method: 'GET' }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (body += d));
        res.on('end', () => {
          try {
            resolve(JSON.parse(body));
          } catch (e) {
            reject(new Error(`status: ${res.statusCode} ${short(body)}`));
          }
        });
      });
      req.on('error', reject);
      req.setTimeout(5000, () => req.destroy(new Error('status: timeout')));
      req.end();
    });
  }

  emlByMessageId() {
    const map = new Map();
    let names = [];
    try {
      names = fs.readdirSync(this.outbox).filter((n) => n.endsWith('.eml'));
    } catch {
      return map;
    }
    for (const n of names) {
      try {
        const m = parseEml(path.join(this.outbox, n));
        map.set(m.messageId, m);
      } catch {
        /* a file being written; the next poll reads it */
      }
    }
    return map;
  }

  async knownMessageIds() {
    return new Set((await this.json('outbox')).map((o) => o.message_id));
  }

  // Waits for a message of `kind` to `to` that is not in `exclude` and whose .eml is written.
  async waitMail(to, kind, exclude = new Set()) {
    return waitFor(`a ${kind} email to ${to}`, async () => {
      const list = (await this.json('outbox')).filter(
        (o) => o.to.toLowerCase() === to.toLowerCase() && o.kind === kind && !exclude.has(o.message_id),
      );
      if (list.length === 0) return null;
      const emls = this.emlByMessageId();
      const found = list.map((o) => ({ o, m: emls.get(o.message_id) })).filter((x) => x.m);
      if (found.length === 0) return null;
      const { o, m } = found[found.length - 1];
      return { ...m, kind: o.kind, record: o.record };
    });
  }

  // A reply as a contact's mail client writes it; delivered into the maildir (tmp/ then new/).
  async replyTo(mail, body) {
    const from = mail.to;
    const dom = from.split('@')[1];
    const mid = `reply-${++this.replySeq}-${crypto.randomBytes(6).toString('hex')}@${dom}`;
    const raw =
      `Return-Path: <${from}>\r\n` +
      `Authentication-Results: mx.invited.test; dkim=pass header.d=${dom}; spf=pass; dmarc=pass (p=none) header.from=${dom}\r\n` +
      `From: Contact <${from}>\r\n` +
      `To: ${mail.replyTo}\r\n` +
      `Subject: Re: your email\r\n` +
      `Message-ID: <${mid}>\r\n` +
      `In-Reply-To: <${mail.messageId}>\r\n` +
      `References: <${mail.messageId}>\r\n` +
      `Date: ${new Date().toUTCString().replace('GMT', '+0000')}\r\n` +
      `MIME-Version: 1.0\r\n` +
      `Content-Type: text/plain; charset=utf-8\r\n` +
      `\r\n${body}\r\n`;
    const name = `${Date.now()}.${process.pid}_${this.replySeq}.browser-test`;
    fs.writeFileSync(path.join(this.inbox, 'tmp', name), raw);
    fs.renameSync(path.join(this.inbox, 'tmp', name), path.join(this.inbox, 'new', name));
    return waitFor(`inbound ${mid}`, async () =>
      (await this.json('inbound')).find((i) => i.message_id === mid || i.message_id === `<${mid}>`),
    );
  }

  // SIGTERM, then a check that it stopped with exit code 0 within 15 s (else SIGKILL and FAIL).
  async stop(name = 'the daemon') {
    if (!this.proc || this.exited) return;
    try {
      this.proc.kill('SIGTERM');
    } catch {
      /* gone */
    }
    const end = Date.now() + 15000;
    while (!this.exited && Date.now() < end) await sleep(50);
    if (this.exited) {
      check(`${name} stops cleanly on SIGTERM`, this.exited.code === 0, JSON.stringify(this.exited));
    } else {
      console.log(`FAIL - ${name} did not stop within 15 s of SIGTERM; killed`);
      failed++;
      this.kill();
    }
  }

  kill() {
    if (this.proc && !this.exited) {
      try {
        this.proc.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Browser: Chromium with a temp profile per context (persistent contexts: their processes are
// found by the profile path, so nothing stays behind whatever happens)

// A bare CI machine's first Chromium start can be slow (font cache, first-run work, a busy host):
// give each launch 90 s and try up to three times with a fresh profile before calling it a failure.
const LAUNCH_TIMEOUT_MS = 90000;
const LAUNCH_ATTEMPTS = 3;
const profiles = new Set();
const contexts = new Set();

// A new browser context (its own Chromium); `options` are playwright's context options.
export async function launchContext(options = {}) {
  let lastError = null;
  let context = null;
  let userDataDir = null;
  for (let attempt = 1; attempt <= LAUNCH_ATTEMPTS; attempt++) {
    userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'invited-chromium-'));
    profiles.add(userDataDir);
    const t0 = Date.now();
    try {
      context = await chromium.launchPersistentContext(userDataDir, {
        executablePath: CHROMIUM,
        headless: true,
        args: CHROMIUM_ARGS,
        viewport: { width: 960, height: 720 },
        timeout: LAUNCH_TIMEOUT_MS,
        ...options,
      });
      console.log(`# Chromium started in ${((Date.now() - t0) / 1000).toFixed(1)} s (attempt ${attempt})`);
      break;
    } catch (e) {
      lastError = e;
      const first = String(e.message).split('\n')[0];
      console.log(`# Chromium launch attempt ${attempt} failed after ${((Date.now() - t0) / 1000).toFixed(1)} s: ${first}`);
      killChromium([userDataDir]);
      fs.rmSync(userDataDir, { recursive: true, force: true });
      profiles.delete(userDataDir);
      context = null;
    }
  }
  if (!context) throw lastError;
  contexts.add(context);
  context._invitedProfile = userDataDir;
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
  return context;
}

// Chromium processes started for our temp profiles, by pid (the wrapper script forks the real one).
function chromiumPids(dirs = [...profiles]) {
  if (dirs.length === 0) return [];
  const pids = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8');
      if (dirs.some((d) => cmd.includes(d))) pids.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return pids;
}

function killChromium(dirs) {
  for (const pid of chromiumPids(dirs)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
  }
}

// Closes one context (or all), kills what is left of their Chromium processes and removes the
// profiles of closed contexts.
export async function closeContext(context) {
  const dir = context && context._invitedProfile;
  await Promise.race([context.close().catch(() => {}), sleep(5000)]);
  contexts.delete(context);
  if (dir) {
    killChromium([dir]);
    fs.rmSync(dir, { recursive: true, force: true });
    profiles.delete(dir);
  }
}

export async function closeBrowsers() {
  for (const c of [...contexts]) {
    await Promise.race([c.close().catch(() => {}), sleep(5000)]);
    contexts.delete(c);
  }
  killChromium();
}

export function removeProfiles() {
  for (const d of [...profiles]) {
    fs.rmSync(d, { recursive: true, force: true });
    profiles.delete(d);
  }
}

export const htmlLang = (page) => page.evaluate(() => document.documentElement.getAttribute('lang'));
export const h1 = async (page) => ((await page.locator('h1').first().textContent()) || '').trim();

// Submits by clicking `selector`, returns the POST's response after the new page has loaded.
export async function submitBy(page, selector) {
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST'),
    page.click(selector),
  ]);
  await page.waitForLoadState('load');
  return resp;
}

// ---------------------------------------------------------------------------------------------
// The run: time limit, signals, cleanup once, the last line

function finish() {
  if (finished) return;
  finished = true;
  console.log(`# ${((Date.now() - started) / 1000).toFixed(1)} s`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed === 0 ? 0 : 1;
}

// Runs `main`, then `cleanup` (also on the time limit or a signal; at most once), then
// `afterFailure` if a check failed (not on the time limit), then prints the last line.
export async function run({ timeLimitMs, main, cleanup, afterFailure = () => {} }) {
  let cleaning = null;
  const cleanupOnce = () => {
    if (!cleaning) cleaning = cleanup();
    return cleaning;
  };

  // Last resort if the process exits some other way: nothing we started stays behind.
  process.on('exit', () => {
    for (const d of daemons) d.kill();
    killChromium();
  });

  const limit = setTimeout(async () => {
    check(`the whole run finished within ${timeLimitMs / 1000} s`, false, 'time limit reached; stopping everything');
    stopping = true;
    await Promise.race([cleanupOnce(), sleep(20000)]);
    finish();
    process.exit(1);
  }, timeLimitMs);

  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, async () => {
      check('not interrupted', false, sig);
      stopping = true;
      await Promise.race([cleanupOnce(), sleep(20000)]);
      finish();
      process.exit(1);
    });
  }

  await main().catch((e) => check('the test script ran without an unexpected error', false, e.stack || String(e)));
  if (!finished) {
    await cleanupOnce();
    if (failed > 0) await afterFailure();
    clearTimeout(limit);
    finish();
  }
}
