// Real-browser test of invited's staff console (DESIGN "Console (staff web pages)").
//
// Starts the real daemon with a console listener on a loopback port 0 (file outbox, maildir
// inbox), adds staff accounts with the CLI, and drives the console's pages in Debian's Chromium
// (headless, playwright-core): sign-in, the CSV invite and its per-row report, the review queue,
// the funnel on the overview against counts computed from the CLI's lists, resend with its
// confirmation, a dead letter retried (a second daemon whose SMTP server is Postfix's smtp-sink
// answering 5xx), the language switch, a viewer's refusals, sign-out, axe-core on every page in
// both languages, and screenshots of every page in both languages. Contacts walk the link pages
// from the .eml files the daemon wrote, as in flows.mjs. Only loopback is used.
//
// Output: one line per check (`ok - ...` / `FAIL - ...`), `note - ...` lines, and last exactly
// `N passed, M failed`. Exit code 0 only if M = 0.
//
// Environment: INVITED_BIN, ARTIFACTS_DIR, CHROMIUM, UPDATE_SCREENSHOTS as in flows.mjs;
// CONSOLE_TEST_TIME_LIMIT (seconds, default BROWSER_TEST_TIME_LIMIT, else 420).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import {
  ARTIFACTS, BIN, CHROMIUM, Daemon, SHOTS, check, configText, closeBrowsers, closeContext, counts, h1, htmlLang,
  launchContext, note, phase, removeProfiles, run, say, short, sleep, submitBy, waitFor,
} from './lib.mjs';

const require = createRequire(import.meta.url);
const AXE_SOURCE = require('axe-core').source;

const TIME_LIMIT_MS =
  Number(process.env.CONSOLE_TEST_TIME_LIMIT || process.env.BROWSER_TEST_TIME_LIMIT || 420) * 1000;
const CONSOLE_ARTIFACTS = path.join(ARTIFACTS, 'console');

const ADMIN = 'lead@contoso.test';
const VIEWER = 'viewer@contoso.test';
const PASSWORD = 'a long enough passphrase';
const PROVIDER = 'contoso-kr';

const d = new Daemon(configText({ withConsole: true }), 'invited-console-');
let d2 = null; // the daemon whose SMTP server refuses (dead letters)
const sinks = new Set(); // smtp-sink processes
let httpBase = '';
let consoleBase = '';
const link = (p) => `http://${httpBase}${p}`;
const con = (p) => `http://${consoleBase}${p}`;

let admin = null; // the admin's browser context and page
let page = null;

// What later steps and the page audit need
const S = {
  reportUrl: null, // /invite?report=… with the 200-row report
  recordId: null, // the resent invitation
  confirmId: null, // a pending invitation for the confirmation page
  inReview: null, // an enrollment left in review (the viewer's refused approve)
};

// ---------------------------------------------------------------------------------------------
// Helpers

let artifactSeq = 0;
async function artifact(p, name) {
  try {
    fs.mkdirSync(CONSOLE_ARTIFACTS, { recursive: true });
    const lang = (await htmlLang(p).catch(() => null)) || 'none';
    await p.screenshot({ path: path.join(CONSOLE_ARTIFACTS, `${String(++artifactSeq).padStart(2, '0')}-${name}-${lang}.png`), fullPage: true });
  } catch (e) {
    note(`screenshot ${name} failed: ${e.message}`);
  }
}

const text = async (p, sel) => ((await p.locator(sel).first().textContent().catch(() => null)) || '').replace(/\s+/g, ' ').trim();
const withLang = (p, lang) => `${p}${p.includes('?') ? '&' : '?'}lang=${lang}`;

// Signs in on the console's /login form; returns {status, url, h1}.
async function signIn(p, base, email, pause = 0) {
  await p.goto(`http://${base}/login`);
  await p.waitForTimeout(pause); // a person takes a moment before typing
  await p.fill('#email', email);
  await p.fill('#password', PASSWORD);
  const resp = await submitBy(p, 'form[action="/login"] button[type=submit]');
  return { status: resp.status(), url: p.url(), h1: await h1(p).catch(() => '') };
}

function enrollmentValues(i) {
  return {
    '#street': `${i} Teheran-ro`,
    '#city': 'Seoul',
    '#postal_code': '06236',
    '#contact_name': `Contact ${i}`,
    '#contact_phone': '+82 2 555 0100',
    '#support_email': `support@r${i}.reseller-kr.test`,
    '#support_phone': '+82 2 555 0199',
    '#website': `https://r${i}.reseller-kr.test`,
    '#mpn_id': String(1000000 + i),
    '#mpn_country': 'KR',
  };
}

// The free loopback port the kernel hands out (closed again at once).
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const c = net.connect({ host: '127.0.0.1', port }, () => {
      c.destroy();
      resolve(true);
    });
    c.on('error', () => resolve(false));
  });
}

function findSmtpSink() {
  const dirs = [...(process.env.PATH || '').split(':'), '/usr/sbin', '/usr/local/sbin', '/sbin'];
  for (const dir of dirs) {
    const f = path.join(dir || '.', 'smtp-sink');
    try {
      fs.accessSync(f, fs.constants.X_OK);
      return f;
    } catch {
      /* not here */
    }
  }
  return null;
}

// Postfix's smtp-sink on 127.0.0.1:port with `faults` (e.g. ['-f', 'rcpt']: 5xx at RCPT TO).
async function startSink(bin, port, faults) {
  const args = [];
  if (process.getuid && process.getuid() === 0) args.push('-u', 'nobody'); // it drops root to -u
  args.push(...faults, `127.0.0.1:${port}`, '64');
  const p = spawn(bin, args, { stdio: 'ignore' });
  const sink = { proc: p, exited: false };
  p.on('exit', () => (sink.exited = true));
  p.on('error', () => (sink.exited = true));
  sinks.add(sink);
  await waitFor(`smtp-sink on 127.0.0.1:${port}`, async () => {
    if (sink.exited) throw new Error('smtp-sink exited');
    return canConnect(port);
  }, 10000);
  return sink;
}

// Last resort if the process exits some other way: no smtp-sink stays behind.
process.on('exit', () => {
  for (const s of sinks) {
    try {
      s.proc.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
});

async function stopSink(sink) {
  if (!sink.exited) {
    try {
      sink.proc.kill('SIGTERM');
    } catch {
      /* gone */
    }
    const end = Date.now() + 5000;
    while (!sink.exited && Date.now() < end) await sleep(50);
    if (!sink.exited) {
      try {
        sink.proc.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  sinks.delete(sink);
}

// ---------------------------------------------------------------------------------------------
// Accessibility (axe-core) and screenshots of one page in both languages

const audited = []; // {name, lang, violations}
const shots = [];

async function axeViolations(p) {
  // Playwright's evaluate goes through the DevTools protocol: the page's CSP (no script at all)
  // does not apply to it, so axe runs on the page exactly as served.
  await p.evaluate(AXE_SOURCE);
  const result = await p.evaluate(() =>
    // eslint-disable-next-line no-undef
    axe.run(document, { resultTypes: ['violations'] }),
  );
  return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target.join(' ')) }));
}

// Elements sticking out past the right edge of the window (the outermost of each such branch).
const overflowing = (pg) =>
  pg.evaluate(() => {
    const w = document.documentElement.clientWidth;
    const out = (e) => e.getBoundingClientRect().right > w + 1;
    const name = (e) =>
      `${e.tagName.toLowerCase()}${e.id ? `#${e.id}` : ''}${[...e.classList].map((c) => `.${c}`).join('')}`;
    const found = [...document.querySelectorAll('main *, header *')]
      .filter((e) => out(e) && !(e.parentElement && out(e.parentElement)))
      .map((e) => `${e.parentElement ? `${name(e.parentElement)} > ` : ''}${name(e)} (right edge ${Math.round(e.getBoundingClientRect().right)} px)`);
    return { width: w, scrollWidth: document.documentElement.scrollWidth, found: found.slice(0, 4) };
  });

const axeOther = new Map(); // rule id → pages, for the moderate and minor findings (notes)

// Opens `p` (a console path) in en-US and ko-KR: axe and the page's width (a check each) and a
// screenshot each (at most `maxHeight` px of a long page).
async function audit(pg, base, name, pathname, { status: expectStatus = 200, maxHeight = 3000 } = {}) {
  for (const lang of ['en-US', 'ko-KR']) {
    const resp = await pg.goto(`http://${base}${withLang(pathname, lang)}`);
    const status = resp ? resp.status() : 0;
    const got = await htmlLang(pg).catch(() => null);
    if (status !== expectStatus || got !== lang.slice(0, 2)) {
      check(`axe: ${name} page (${lang}) opens`, false, `${pathname}: HTTP ${status}, html lang=${got}`);
      continue;
    }
    let found;
    try {
      found = await axeViolations(pg);
    } catch (e) {
      check(`axe: ${name} page (${lang}) could be checked`, false, e.message.split('\n')[0]);
      continue;
    }
    const violations = found.filter((v) => v.impact === 'serious' || v.impact === 'critical');
    for (const v of found.filter((x) => !violations.includes(x))) {
      axeOther.set(`${v.id} (${v.impact})`, [...(axeOther.get(`${v.id} (${v.impact})`) || []), `${name}/${lang}: ${v.targets.join(' | ')}`]);
    }
    audited.push({ name, lang, violations });
    check(`axe: ${name} page (${lang}) has no serious or critical violations`, violations.length === 0,
      violations.map((v) => `${v.id} (${v.impact}: ${v.help}) at ${v.targets.join(' | ')}`).join('; '));
    const o = await overflowing(pg);
    check(`layout: ${name} page (${lang}) fits the ${o.width} px window (no sideways scrolling)`, o.scrollWidth <= o.width,
      `page ${o.scrollWidth} px wide; sticking out: ${o.found.join('; ')}`);
    try {
      fs.mkdirSync(SHOTS, { recursive: true });
      const file = path.join(SHOTS, `console-${name}-${lang}.png`);
      const size = await pg.evaluate(() => ({ w: document.documentElement.scrollWidth, h: document.documentElement.scrollHeight }));
      await pg.screenshot({ path: file, fullPage: true, clip: { x: 0, y: 0, width: size.w, height: Math.min(size.h, maxHeight) } });
      shots.push(file);
    } catch (e) {
      note(`screenshot console-${name}-${lang} failed: ${e.message}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 1. sign-in

async function signInPhase() {
  say('# sign-in');
  admin = await launchContext();
  page = await admin.newPage();
  // a fresh browser: Chromium asks for /favicon.ico by itself meanwhile (signed out: a 303 to
  // /login), which must not invalidate the form already on the page
  const r = await signIn(page, consoleBase, ADMIN, 1000);
  check('1. signing in from a fresh browser works on the first try', r.url === con('/') && r.status === 303, short(r));
  await artifact(page, 'overview-after-sign-in');
  check('1. sign in as admin (email, password) → 303 → the overview',
    r.status === 303 && r.url === con('/') && r.h1 === 'Overview' &&
      (await text(page, '.who .me')).includes(ADMIN),
    short(r));
}

// ---------------------------------------------------------------------------------------------
// 2. invite by CSV

const CSV_ROWS = 200;
const BAD = { 23: 'webmail', 101: 'country', 178: 'email' }; // file line → what is wrong
const rowEmail = (i) => `contact${i}@r${i}.reseller-kr.test`;
const rowCompany = (i) => `Reseller ${i} Korea`;

function bigCsv() {
  const lines = ['email,company,country'];
  for (let line = 2; line <= CSV_ROWS + 1; line++) {
    const i = line - 1;
    if (BAD[line] === 'webmail') lines.push(`reseller${i}@gmail.com,${rowCompany(i)},KR`);
    else if (BAD[line] === 'country') lines.push(`${rowEmail(i)},${rowCompany(i)},JP`);
    else if (BAD[line] === 'email') lines.push(`not-an-email-${i},${rowCompany(i)},KR`);
    else lines.push(`${rowEmail(i)},${rowCompany(i)},KR`);
  }
  return `${lines.join('\n')}\n`;
}

async function report(pg) {
  const n = async (id) => Number(await text(pg, `#${id}`));
  const rejected = await pg.evaluate(() =>
    [...document.querySelectorAll('tr[data-outcome="rejected"]')].map((tr) => ({
      line: Number(tr.getAttribute('data-line')),
      reason: (tr.cells[3] ? tr.cells[3].textContent : '').trim(),
    })),
  );
  return {
    queued: await n('report-queued'),
    existing: await n('report-existing'),
    suppressed: await n('report-suppressed'),
    rejectedCount: await n('report-rejected'),
    rejected,
    rows: await pg.locator('#report tbody tr').count(),
  };
}

async function submitInvite(pg) {
  const resp = await submitBy(pg, 'form[action="/invite"] button[type=submit]');
  return resp.status();
}

async function invitePhase() {
  say('# invite by CSV');
  const file = path.join(d.dir, 'resellers-200.csv');
  fs.writeFileSync(file, bigCsv());
  let resp = await page.goto(con('/invite'));
  check('2. the invite page opens with the file field, the text field and the provider list',
    resp.status() === 200 && (await page.locator('#csv[type=file]').count()) === 1 &&
      (await page.locator('#csv_text').count()) === 1 &&
      (await page.locator(`#provider option[value="${PROVIDER}"]`).count()) === 1,
    `status=${resp.status()}`);
  await page.selectOption('#provider', PROVIDER);
  await page.setInputFiles('#csv', file);
  const st = await submitInvite(page);
  await artifact(page, 'invite-report');
  const r = await report(page);
  S.reportUrl = new URL(page.url()).pathname + new URL(page.url()).search;
  check('2. uploading the 200-row CSV: POST answered 303, the report shows', st === 303 && /^\/invite\?report=/.test(S.reportUrl), `status=${st} url=${page.url()}`);
  check('2. report: 197 queued, 3 rejected', r.queued === 197 && r.rejectedCount === 3, short(r));
  const lines = r.rejected.map((x) => x.line).sort((a, b) => a - b);
  const wanted = Object.keys(BAD).map(Number).sort((a, b) => a - b);
  check('2. exactly 3 rows tr[data-outcome=rejected], at the bad rows\' lines (header = line 1)',
    r.rejected.length === 3 && JSON.stringify(lines) === JSON.stringify(wanted),
    `lines ${JSON.stringify(lines)}, wanted ${JSON.stringify(wanted)}`);
  check('2. every rejected row says why', r.rejected.length === 3 && r.rejected.every((x) => x.reason.length > 0), short(r.rejected));
  note(`reasons given: ${r.rejected.map((x) => `line ${x.line} (${BAD[x.line]}): "${x.reason}"`).join('; ')}`);
  // the same report in Korean: the words of the rows too
  await page.goto(con(withLang(S.reportUrl, 'ko-KR')));
  const koRow = await text(page, 'tr[data-outcome="queued"] td:nth-child(3)');
  const koStat = await text(page, '#report dt');
  check('2. the report in Korean (?lang=ko-KR) says "대기열에 추가됨" in its rows as in its totals',
    koStat === '대기열에 추가됨' && koRow.startsWith('대기열에 추가됨'),
    `totals' label "${koStat}", first queued row's outcome cell "${short(koRow)}" (the row labels are fixed in the language of the POST)`);
  await page.goto(con(withLang('/invite', 'en-US')));
  const invs = await d.json('list', 'invitations', '--provider', PROVIDER);
  check('2. the CLI lists 197 invitations for contoso-kr', invs.length === 197, String(invs.length));

  // pasted CSV
  await page.goto(con('/invite'));
  await page.selectOption('#provider', PROVIDER);
  await page.fill('#csv_text', 'email,company,country\npaste1@paste-one.test,Paste One Korea,KR\npaste2@paste-two.test,Paste Two Korea,KR\n');
  const st2 = await submitInvite(page);
  await artifact(page, 'invite-pasted');
  const r2 = await report(page);
  check('2. a pasted CSV (2 rows in #csv_text): 2 queued, none rejected',
    st2 === 303 && r2.queued === 2 && r2.rejectedCount === 0 && r2.rows === 2, short(r2));

  // the same file again
  await page.goto(con('/invite'));
  await page.selectOption('#provider', PROVIDER);
  await page.setInputFiles('#csv', file);
  const st3 = await submitInvite(page);
  await artifact(page, 'invite-again');
  const r3 = await report(page);
  check('2. the same 200-row file again: 0 queued, 197 existing, 3 rejected (nobody invited twice)',
    st3 === 303 && r3.queued === 0 && r3.existing === 197 && r3.rejectedCount === 3, short(r3));
  const invs2 = await d.json('list', 'invitations', '--provider', PROVIDER);
  check('2. still 199 invitations for contoso-kr (197 + 2 pasted)', invs2.length === 199, String(invs2.length));
}

// ---------------------------------------------------------------------------------------------
// 3. contacts through the links, the review queue, and the funnel on the overview

async function enrollByLink(p, i, mail) {
  const resp = await p.goto(link(mail.link));
  if (resp.status() !== 200 || (await p.locator('input[name=action][value=enroll]').count()) !== 1) {
    throw new Error(`the invitation link of row ${i} did not open the enrollment form (HTTP ${resp.status()})`);
  }
  for (const [sel, v] of Object.entries(enrollmentValues(i))) await p.fill(sel, v);
  const r = await submitBy(p, 'form:has(input[name=action][value=enroll]) button[type=submit]');
  if (r.status() !== 200) throw new Error(`enrolling row ${i}: HTTP ${r.status()} "${await h1(p)}"`);
}

async function pressAction(p, url, action, consent = false) {
  const resp = await p.goto(url);
  if (resp.status() !== 200 || (await p.locator(`input[name=action][value=${action}]`).count()) !== 1) {
    throw new Error(`${url} has no ${action} form (HTTP ${resp.status()})`);
  }
  if (consent) await p.check('#consent');
  const r = await submitBy(p, `form:has(input[name=action][value=${action}]) button[type=submit]`);
  if (r.status() !== 200) throw new Error(`${action}: HTTP ${r.status()} "${await h1(p)}"`);
}

async function enrollmentOf(email) {
  return (await d.json('list', 'enrollments')).find((e) => e.email === email);
}

async function funnelPhase() {
  say('# contacts through the links; approve and reject in the review queue; the funnel');
  const invs = await d.json('list', 'invitations', '--provider', PROVIDER);
  const byEmail = new Map(invs.map((x) => [x.email, x]));
  // rows 1..9 of the file (lines 2..10): 8 take a part, row 9 is resent in step 4, row 10 is
  // the confirmation page's record
  const who = {};
  for (const [name, i] of Object.entries({ A: 1, B: 2, C: 3, D: 4, E: 5, F: 6, G: 7, H: 8, R: 9, Q: 10 })) {
    const email = rowEmail(i);
    const inv = byEmail.get(email);
    if (!inv) throw new Error(`no invitation for ${email}`);
    who[name] = { i, email, inv, mail: await d.waitMail(email, 'provider_invitation') };
  }
  S.recordId = who.R.inv.id;
  S.firstMailR = who.R.mail;
  S.confirmId = who.Q.inv.id;
  const lp = await admin.newPage(); // the contacts' pages (same browser: the link pages' cookies do not matter)

  // A..F enroll through their invitation links
  const seen = await d.knownMessageIds();
  for (const n of ['A', 'B', 'C', 'D', 'E', 'F']) await enrollByLink(lp, who[n].i, who[n].mail);
  for (const n of ['A', 'B', 'C', 'D', 'E', 'F']) who[n].enr = await enrollmentOf(who[n].email);
  check('3. six contacts enrolled through the invitation link\'s form (pending_verification)',
    ['A', 'B', 'C', 'D', 'E', 'F'].every((n) => who[n].enr && who[n].enr.state === 'pending_verification'),
    short(['A', 'B', 'C', 'D', 'E', 'F'].map((n) => who[n].enr && who[n].enr.state)));
  // A..E confirm from the verification mail
  for (const n of ['A', 'B', 'C', 'D', 'E']) {
    const ver = await d.waitMail(who[n].email, 'contact_verification', seen);
    await pressAction(lp, link(ver.link), 'confirm');
  }
  const states = async (names) => Promise.all(names.map((n) => d.stateOf(who[n].enr.id)));
  check('3. five verified their contact from the verification mail (in_review)',
    (await states(['A', 'B', 'C', 'D', 'E'])).every((s) => s === 'in_review'), short(await states(['A', 'B', 'C', 'D', 'E'])));
  // G declines from the enrollment form page
  await pressAction(lp, link(who.G.mail.link), 'decline');
  check('3. one declined from the invitation link', (await d.stateOf(who.G.inv.id)) === 'declined');
  // H is revoked (CLI)
  await d.json('revoke', who.H.inv.id);
  check('3. one invitation revoked (CLI)', (await d.stateOf(who.H.inv.id)) === 'revoked');

  // the review queue: approve A, B, C; reject D with a reason; leave E
  let resp = await page.goto(con('/review'));
  const queued = await page.evaluate(() => [...document.querySelectorAll('section.review[data-id]')].map((s) => s.getAttribute('data-id')));
  check('3. the review queue lists the five enrollments in review, each with Approve and Reject',
    resp.status() === 200 && ['A', 'B', 'C', 'D', 'E'].every((n) => queued.includes(who[n].enr.id)) &&
      (await page.locator('section.review button.approve').count()) === queued.length &&
      (await page.locator('section.review form.reject button.danger').count()) === queued.length,
    short(queued));
  await artifact(page, 'review');
  const seenApprove = await d.knownMessageIds();
  for (const n of ['A', 'B', 'C']) {
    const r = await submitBy(page, `section.review[data-id="${who[n].enr.id}"] button.approve`);
    if (n === 'A') {
      check('3. Approve → 303 → the queue with the notice', r.status() === 303 && new URL(page.url()).pathname === '/review' &&
        (await text(page, 'p.notice')).startsWith('Approved'), `status=${r.status()} url=${page.url()} notice=${await text(page, 'p.notice')}`);
    }
  }
  check('3. approved from the console: the three are approved',
    (await states(['A', 'B', 'C'])).every((s) => s === 'approved'), short(await states(['A', 'B', 'C'])));
  await page.fill(`section.review[data-id="${who.D.enr.id}"] form.reject input[name=reason]`, 'The MPN ID does not match the company.');
  const rj = await submitBy(page, `section.review[data-id="${who.D.enr.id}"] form.reject button.danger`);
  const dShow = await d.show(who.D.enr.id);
  const dLast = (dShow.history || [])[dShow.history.length - 1] || {};
  check('3. Reject with a reason → rejected; the history names the console, the staff member and the reason',
    rj.status() === 303 && dShow.state === 'rejected' && dLast.channel === 'console' && dLast.staff === ADMIN &&
      JSON.stringify(dShow).includes('The MPN ID does not match the company.'),
    short({ status: rj.status(), state: dShow.state, last: dLast }));
  await artifact(page, 'review-after');
  check('3. the queue now holds only the one left in review',
    (await page.locator('section.review[data-id]').count()) === 1 &&
      (await page.locator(`section.review[data-id="${who.E.enr.id}"]`).count()) === 1);
  S.inReview = who.E.enr.id;

  // A, B accept the agreement; A then authorizes from the fresh invitation link
  for (const n of ['A', 'B']) {
    const agr = await d.waitMail(who[n].email, 'agreement_request', seenApprove);
    const before = await d.knownMessageIds();
    await pressAction(lp, link(agr.link), 'accept', true);
    who[n].fresh = await d.waitMail(who[n].email, 'provider_invitation', before);
  }
  check('3. two accepted the agreement (active)', (await states(['A', 'B'])).every((s) => s === 'active'), short(await states(['A', 'B'])));
  await pressAction(lp, link(who.A.fresh.link), 'authorize', true);
  check('3. one authorized the provider from the fresh invitation link', (await d.stateOf(who.A.inv.id)) === 'authorized');
  await lp.close();

  // an inbound message a person has to look at (for the inbound page)
  const ir = await d.replyTo(who.F.mail, 'Hello, who are you and what is this about?');
  note(`a free-text reply was read as "${ir.outcome}"`);

  // the overview against the CLI's lists
  resp = await page.goto(con('/'));
  const shown = await page.evaluate((p) => {
    const o = {};
    for (const e of document.querySelectorAll(`[data-provider="${p}"][data-stage]`)) {
      o[e.getAttribute('data-stage')] = e.textContent.trim();
    }
    return o;
  }, PROVIDER);
  await artifact(page, 'overview-funnel');
  const all = await d.json('list', 'invitations', '--provider', PROVIDER);
  const enrs = await d.json('list', 'enrollments');
  const enrOf = new Map(enrs.map((e) => [e.email.toLowerCase(), e]));
  // contact_verified: the enrollment reached in_review (DESIGN: "in_review or later"), read from
  // its history, so a rejected one counts too
  const reached = new Set();
  for (const e of enrs) {
    const shown = await d.json('show', e.id);
    if ((shown.history || []).some((h) => h.to === 'in_review')) reached.add(e.id);
  }
  const expected = { invited: 0, enrolled: 0, contact_verified: 0, approved: 0, active: 0, authorized: 0, declined: 0, expired: 0, undeliverable: 0, revoked: 0 };
  for (const inv of all) {
    expected.invited++;
    const e = enrOf.get(inv.email.toLowerCase());
    if (e) {
      expected.enrolled++;
      if (reached.has(e.id)) expected.contact_verified++;
      if (['approved', 'active'].includes(e.state)) expected.approved++;
      if (e.state === 'active') expected.active++;
    }
    if (inv.state in expected && ['authorized', 'declined', 'expired', 'undeliverable', 'revoked'].includes(inv.state)) expected[inv.state]++;
  }
  check('3. a rejected enrollment is among the contacts (it counts as contact_verified)', enrs.some((e) => e.state === 'rejected' && reached.has(e.id)));
  check('3. the overview shows all ten stages for contoso-kr', resp.status() === 200 && Object.keys(expected).every((k) => k in shown), short(shown));
  for (const [stage, n] of Object.entries(expected)) {
    check(`3. funnel ${stage}: overview ${shown[stage]} = ${n} from the CLI's lists`, shown[stage] === String(n), `overview ${shown[stage]}, CLI ${n}`);
  }
}

// ---------------------------------------------------------------------------------------------
// 4. resend from the record page

async function resendPhase() {
  say('# resend from a record page');
  const id = S.recordId;
  const email = rowEmail(9);
  const old = S.firstMailR;
  await page.goto(con('/records?kind=invitations'));
  await page.fill('#q', email);
  await Promise.all([page.waitForNavigation(), page.click('form.filters button[type=submit]')]);
  const rows = await page.locator('#records tbody tr').count();
  check('4. the records list filtered by the address shows its one row', rows === 1 && (await page.locator(`#records tr[data-id="${id}"]`).count()) === 1, `${rows} rows at ${page.url()}`);
  await artifact(page, 'records-filtered');
  await Promise.all([page.waitForNavigation(), page.click(`#records tr[data-id="${id}"] a`)]);
  check('4. the row\'s link opens the record page', new URL(page.url()).pathname === `/records/${id}` &&
    (await text(page, '#record-state')) === 'invited', `${page.url()} state=${await text(page, '#record-state')}`);
  await Promise.all([page.waitForNavigation(), page.click(`a.button[href="/records/${id}/resend"]`)]);
  check('4. "Resend the link" opens a confirmation page with #confirm', new URL(page.url()).pathname === `/records/${id}/resend` &&
    (await page.locator('#confirm').count()) === 1 && (await h1(page)) === 'Confirm', page.url());
  await artifact(page, 'confirm-resend');
  const seen = await d.knownMessageIds();
  const r = await submitBy(page, '#confirm');
  const notice = await text(page, 'p.notice');
  check('4. confirming → 303 → the record page with the notice', r.status() === 303 &&
    new URL(page.url()).pathname === `/records/${id}` && /new link was sent/.test(notice), `status=${r.status()} url=${page.url()} notice="${notice}"`);
  await artifact(page, 'record-resent');
  const timeline = await text(page, '#timeline li');
  check('4. the history\'s newest entry shows the channel console and the staff email', /console/.test(timeline) && timeline.includes(ADMIN), timeline);
  const s = await d.show(id);
  const last = s.history[s.history.length - 1] || {};
  check('4. show: the last history entry has channel console and staff = the admin', last.channel === 'console' && last.staff === ADMIN, short(last));
  const fresh = await d.waitMail(email, 'provider_invitation', seen);
  const lp = await admin.newPage();
  let resp = await lp.goto(link(old.link));
  await artifact(lp, 'old-link');
  check('4. the OLD link now shows the invalid-link page', resp.status() === 404 && (await lp.locator('main.result-invalid').count()) === 1,
    `status=${resp.status()} h1=${await h1(lp).catch(() => '')}`);
  resp = await lp.goto(link(fresh.link));
  check('4. the new mail\'s link opens the enrollment form', fresh.link !== old.link && resp.status() === 200 &&
    (await lp.locator('input[name=action][value=enroll]').count()) === 1, `status=${resp.status()}`);
  await lp.close();
}

// ---------------------------------------------------------------------------------------------
// 6. the language switch

async function languagePhase() {
  say('# language switch');
  await page.goto(con('/'));
  const before = [await htmlLang(page), await h1(page)];
  await Promise.all([page.waitForNavigation(), page.click('a.lang')]);
  const ko = [await htmlLang(page), await h1(page), await text(page, 'form[action="/logout"] button')];
  await artifact(page, 'overview-ko');
  check('6. the language link (a.lang) switches to Korean', before[0] === 'en' && ko[0] === 'ko' && ko[1] === '개요' && ko[2] === '로그아웃', short([before, ko]));
  await page.goto(con('/records'));
  check('6. the choice holds on the next page', (await htmlLang(page)) === 'ko' && (await h1(page)) === '레코드', await h1(page));
  await Promise.all([page.waitForNavigation(), page.click('a.lang')]);
  check('6. and back to English', (await htmlLang(page)) === 'en' && (await h1(page)) === 'Records', short([await htmlLang(page), await h1(page)]));
}

// ---------------------------------------------------------------------------------------------
// 9/10. every admin page: axe and screenshots, both languages

async function auditAdminPages() {
  say('# axe-core and screenshots: the admin\'s pages in en-US and ko-KR');
  const pages = [
    ['overview', '/'],
    ['invite-report', S.reportUrl],
    ['records', '/records?kind=invitations'],
    ['record', `/records/${S.recordId}`],
    ['confirm', `/records/${S.confirmId}/resend`],
    ['review', '/review'],
    ['inbound', '/inbound'],
  ];
  for (const [name, p] of pages) {
    if (!p) {
      check(`axe: ${name} page`, false, 'not reached (an earlier step failed)');
      continue;
    }
    await audit(page, consoleBase, name, p, { maxHeight: name === 'invite-report' ? 1400 : 3000 });
  }
  await page.goto(con(withLang('/', 'en-US')));
}

// ---------------------------------------------------------------------------------------------
// 7. a viewer

async function viewerPhase() {
  say('# a viewer');
  const ctx = await launchContext();
  const vp = await ctx.newPage();
  await audit(vp, consoleBase, 'login', '/login');
  await vp.goto(con(withLang('/login', 'en-US')));
  const r = await signIn(vp, consoleBase, VIEWER);
  check('7. the viewer signs in', r.url === con('/') && (await text(vp, '.who .me')).includes(VIEWER), short(r));
  const resp = await vp.goto(con('/review'));
  const id = S.inReview;
  check('7. the viewer sees the review queue with the enrollment, without Approve or Reject',
    resp.status() === 200 && (await vp.locator(`section.review[data-id="${id}"]`).count()) === 1 &&
      (await vp.locator('button.approve').count()) === 0 && (await vp.locator('form.reject').count()) === 0,
    `status=${resp.status()} approve buttons=${await vp.locator('button.approve').count()}`);
  await artifact(vp, 'review-viewer');
  const csrf = await vp.inputValue('form[action="/logout"] input[name=csrf]');
  const post = await vp.request.post(con(`/review/${id}/approve`), { form: { csrf }, maxRedirects: 0 });
  check('7. a POST /review/ID/approve with the viewer\'s session and CSRF token → 403', post.status() === 403, `HTTP ${post.status()}`);
  check('7. the enrollment is still in_review', (await d.stateOf(id)) === 'in_review');
  const inv = await vp.goto(con('/invite'));
  check('7. the viewer gets a 403 page for /invite', inv.status() === 403 && (await h1(vp)) === 'Not allowed', `status=${inv.status()} h1=${await h1(vp)}`);
  await audit(vp, consoleBase, 'forbidden', '/invite', { status: 403 });
  await closeContext(ctx);
}

// ---------------------------------------------------------------------------------------------
// 5. a dead letter, retried from the console

async function deadLetterPhase() {
  say('# dead letter: a second daemon whose SMTP server answers 5xx (smtp-sink -f rcpt)');
  const bin = findSmtpSink();
  if (!check('5. Postfix\'s smtp-sink is installed (scripts/mailstack install)', !!bin, 'smtp-sink not on PATH nor in /usr/sbin: the dead-letter retry could not be tested')) return;
  const port = await freePort();
  let sink = await startSink(bin, port, ['-f', 'rcpt']);
  d2 = new Daemon(configText({ withConsole: true, outbound: `transport = "smtp"\nhost = "127.0.0.1"\nport = ${port}\ntls = "none"\nconcurrency = 2` }), 'invited-console-smtp-');
  d2.start();
  await d2.ready();
  const base2 = (await d2.status()).console;
  const add = await d2.cli(['staff', 'add', ADMIN, '--role', 'admin', '--password-stdin'], `${PASSWORD}\n`);
  if (!add.ok) throw new Error(`staff add on the second daemon: ${add.stderr}`);
  const TO = 'nobody@fabrikam.test';
  const inv = await d2.json('invite', '--provider', PROVIDER, '--email', TO, '--company', 'Fabrikam Korea', '--country', 'KR');
  const dead = await waitFor('the invitation on the dead list', async () =>
    (await d2.json('outbox', '--dead')).find((o) => o.to === TO), 30000).catch(() => null);
  check('5. the invitation refused with 5xx is on the dead list (outbox --dead)', !!dead, short(await d2.json('outbox')));
  if (!dead) return;
  // the cause is fixed: the server now accepts
  await stopSink(sink);
  sink = await startSink(bin, port, []);
  const ctx = await launchContext();
  const p2 = await ctx.newPage();
  await signIn(p2, base2, ADMIN);
  await audit(p2, base2, 'outbox', '/outbox');
  await p2.goto(`http://${base2}/outbox?lang=en-US`);
  const row = `#dead tr[data-id="${dead.id}"]`;
  check('5. the console\'s outbox lists the dead letter with the server\'s answer and a Retry button',
    (await p2.locator(row).count()) === 1 && /5\d\d/.test(await text(p2, `${row} td.answer`)) &&
      (await p2.locator(`${row} button[type=submit]`).count()) === 1,
    `answer="${await text(p2, `${row} td.answer`)}"`);
  const deadBefore = await p2.locator('#dead tbody tr').count();
  const r = await submitBy(p2, `${row} button[type=submit]`);
  await artifact(p2, 'outbox-retried');
  const notice = await text(p2, 'p.notice');
  check('5. Retry → 303 → the outbox with "Queued again." and the row gone from the dead list',
    r.status() === 303 && notice === 'Queued again.' && (await p2.locator(row).count()) === 0,
    `status=${r.status()} notice="${notice}" dead rows ${deadBefore}→${await p2.locator('#dead tbody tr').count()}`);
  const sent = await waitFor('the retried message to be sent', async () =>
    (await d2.json('outbox')).find((o) => o.id === dead.id && o.state === 'sent'), 30000).catch(() => null);
  check('5. the retried message is then sent (the server accepts now)', !!sent, short((await d2.json('outbox')).find((o) => o.id === dead.id)));
  const deadNow = await d2.json('outbox', '--dead');
  check('5. outbox --dead no longer lists it', !deadNow.some((o) => o.id === dead.id), short(deadNow));
  note(`the invitation itself is now ${await d2.stateOf(inv.id)}`);
  await closeContext(ctx);
  await stopSink(sink);
}

// ---------------------------------------------------------------------------------------------
// 8. sign out

async function signOutPhase() {
  say('# sign out');
  await page.goto(con('/'));
  const saved = (await admin.cookies(con('/'))).find((c) => c.name === 'invited_console');
  check('8. the session cookie is HttpOnly and SameSite=Strict', !!saved && saved.httpOnly && saved.sameSite === 'Strict', short(saved));
  const r = await submitBy(page, 'form[action="/logout"] button[type=submit]');
  check('8. "Sign out" → 303 → the sign-in page', r.status() === 303 && new URL(page.url()).pathname === '/login' && (await h1(page)) === 'Sign in', `status=${r.status()} url=${page.url()}`);
  const after = await page.goto(con('/'));
  check('8. signed out, / leads to the sign-in page', new URL(page.url()).pathname === '/login', `${after && after.status()} ${page.url()}`);
  if (!saved) return;
  await admin.addCookies([saved]);
  const old = await page.request.get(con('/'), { maxRedirects: 0 });
  check('8. the old session cookie sent again gets 303 to /login for /', old.status() === 303 && old.headers().location === '/login',
    `HTTP ${old.status()} location=${old.headers().location}`);
}

// ---------------------------------------------------------------------------------------------
// Cleanup, main

async function cleanup() {
  await closeBrowsers();
  await d.stop();
  if (d2) await d2.stop('the second daemon (SMTP)');
  for (const s of [...sinks]) await stopSink(s);
  try {
    fs.mkdirSync(CONSOLE_ARTIFACTS, { recursive: true });
    fs.copyFileSync(d.log, path.join(CONSOLE_ARTIFACTS, 'daemon.log'));
    if (d2) fs.copyFileSync(d2.log, path.join(CONSOLE_ARTIFACTS, 'daemon-smtp.log'));
  } catch {
    /* no log */
  }
  removeProfiles();
  if (counts().failed === 0) {
    fs.rmSync(d.dir, { recursive: true, force: true });
    if (d2) fs.rmSync(d2.dir, { recursive: true, force: true });
  } else {
    console.log(`# kept ${d.dir}${d2 ? ` and ${d2.dir}` : ''} (config, store, outbox, inbox, daemon.log)`);
  }
}

function printDaemonLog() {
  try {
    const log = fs.readFileSync(path.join(CONSOLE_ARTIFACTS, 'daemon.log'), 'utf8').split('\n').slice(-30).join('\n');
    console.log(`# daemon.log (last lines):\n${log.replace(/^/gm, '#   ')}`);
  } catch {
    /* none */
  }
}

async function main() {
  fs.rmSync(CONSOLE_ARTIFACTS, { recursive: true, force: true });
  console.log(`# invited console in a browser: ${BIN}, Chromium ${CHROMIUM}, temp dir ${d.dir}`);
  if (!check('the invited binary exists', fs.existsSync(BIN), `${BIN} (run cargo build)`)) return;
  d.start();
  try {
    await d.ready();
    const st = await d.status();
    httpBase = st.http;
    consoleBase = st.console;
  } catch (e) {
    check('the daemon starts and answers on its admin socket', false, e.message);
    return;
  }
  check('the daemon starts; the console\'s address from GET /v1/status', /^127\.0\.0\.1:\d+$/.test(consoleBase || '') && /^127\.0\.0\.1:\d+$/.test(httpBase || ''), `console=${consoleBase} http=${httpBase}`);
  for (const [email, role] of [[ADMIN, 'admin'], [VIEWER, 'viewer']]) {
    const r = await d.cli(['staff', 'add', email, '--role', role, '--password-stdin'], `${PASSWORD}\n`);
    check(`staff add ${email} --role ${role} --password-stdin`, r.ok, `${r.stderr}${r.stdout}`);
  }
  try {
    await signInPhase();
  } catch (e) {
    check('Chromium starts and the sign-in page works', false, e.message.split('\n')[0]);
    return;
  }
  await phase('2. invite', invitePhase);
  await phase('3. funnel', funnelPhase);
  await phase('4. resend', resendPhase);
  await phase('6. language switch', languagePhase);
  await phase('9. admin pages: axe and screenshots', auditAdminPages);
  await phase('7. viewer', viewerPhase);
  await phase('5. dead letter', deadLetterPhase);
  await phase('8. sign out', signOutPhase);
  const names = new Set(shots.map((f) => path.basename(f)));
  const wanted = ['overview', 'invite-report', 'records', 'record', 'confirm', 'review', 'inbound', 'login', 'forbidden', 'outbox']
    .flatMap((n) => [`console-${n}-en-US.png`, `console-${n}-ko-KR.png`]);
  const missing = wanted.filter((n) => !names.has(n));
  check(`10. screenshots of ${wanted.length / 2} console pages in both languages in ${path.relative(process.cwd(), SHOTS) || SHOTS}`, missing.length === 0, `missing: ${missing.join(', ')}`);
  for (const [rule, where] of axeOther) note(`axe, not failing: ${rule} on ${where.length} page(s): ${short(where.join('; '))}`);
  check('the daemon is still running', !d.exited, JSON.stringify(d.exited));
}

await run({ timeLimitMs: TIME_LIMIT_MS, main, cleanup, afterFailure: printDaemonLog });
