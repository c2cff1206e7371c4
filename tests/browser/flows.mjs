// Real-browser tests of invited's link pages.
//
// Starts the real daemon on a temp config (file outbox, maildir inbox, HTTP on a loopback port 0),
// sets records up and reads their states ONLY through the CLI (`invited --config FILE --json ...`),
// takes every link from the .eml files the daemon wrote, and walks the pages in Debian's Chromium
// (headless, driven by playwright-core). Replies, where a step needs one without a click, are
// dropped into the inbox maildir the way an MDA would.
//
// Output: one line per check (`ok - ...` / `FAIL - ...`), `note - ...` lines for things seen on the
// pages that are not checks, and last exactly `N passed, M failed`. Exit code 0 only if M = 0.
//
// Environment: INVITED_BIN (default ../../target/debug/invited), ARTIFACTS_DIR (default
// ./artifacts), CHROMIUM (default /usr/bin/chromium), BROWSER_TEST_TIME_LIMIT (seconds, default 180).

import fs from 'node:fs';
import path from 'node:path';
import {
  ARTIFACTS, BIN, CHROMIUM, Daemon, SHOTS, check, configText, closeBrowsers, counts, h1, htmlLang, launchContext,
  note, phase, removeProfiles, run, say, short, sleep, submitBy, waitFor,
} from './lib.mjs';

const TIME_LIMIT_MS = Number(process.env.BROWSER_TEST_TIME_LIMIT || 420) * 1000;

// ---------------------------------------------------------------------------------------------
// The daemon, its config and its CLI (lib.mjs)

const d = new Daemon(configText());
const { dir } = d;
const json = (...args) => d.json(...args);
const show = (id) => d.show(id);
const stateOf = (id) => d.stateOf(id);
const waitState = (id, state) => d.waitState(id, state);
const emlByMessageId = () => d.emlByMessageId();
const knownMessageIds = () => d.knownMessageIds();
const waitMail = (to, kind, exclude) => d.waitMail(to, kind, exclude);
const replyTo = (mail, body) => d.replyTo(mail, body);

// ---------------------------------------------------------------------------------------------
// Browser

let httpBase = '';
let context = null;
const pageRequests = []; // every request any page made: {method, url}

async function startBrowser() {
  context = await launchContext();
  context.on('request', (r) => pageRequests.push({ method: r.method(), url: r.url() }));
}


let shotSeq = 0;
async function artifact(page, name) {
  try {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const lang = (await htmlLang(page).catch(() => null)) || 'none';
    const file = path.join(ARTIFACTS, `${String(++shotSeq).padStart(2, '0')}-${name}-${lang}.png`);
    await page.screenshot({ path: file, fullPage: true });
  } catch (e) {
    note(`screenshot ${name} failed: ${e.message}`);
  }
}


const url = (p) => `http://${httpBase}${p}`;

function securityHeaders(resp) {
  const h = resp.headers();
  return (
    h['cache-control'] === 'no-store' &&
    h['referrer-policy'] === 'no-referrer' &&
    /frame-ancestors 'none'/.test(h['content-security-policy'] || '') &&
    /default-src 'none'/.test(h['content-security-policy'] || '')
  );
}

// Every input/select/textarea a person fills in has a label.
const unlabelled = (page) =>
  page.evaluate(() =>
    [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
      .filter((e) => !e.labels || e.labels.length === 0)
      .map((e) => e.id || e.name),
  );

// ---------------------------------------------------------------------------------------------
// Record snapshots (for the scanner simulation)

async function snapshot() {
  const all = [
    ...(await json('list', 'invitations')),
    ...(await json('list', 'enrollments')),
    ...(await json('list', 'customers')),
  ];
  const snap = new Map();
  for (const r of all) {
    const s = await show(r.id);
    snap.set(r.id, { state: s.state, history: (s.history || []).length });
  }
  return snap;
}

// Waits until nothing is queued in the outbox (so re-sends caused by earlier steps are done).
async function outboxSettled() {
  await waitFor('the outbox to drain', async () =>
    (await json('outbox')).every((o) => o.state === 'sent'),
  );
}

// ---------------------------------------------------------------------------------------------
// Enrollment helpers

function enrollmentToml(email, company, contactName) {
  const f = path.join(dir, `enroll-${email.replace(/[^a-z0-9]/gi, '_')}.toml`);
  fs.writeFileSync(
    f,
    `company = "${company}"
country = "KR"
locale = "en-US"
[address]
street = "1 Test-ro"
city = "Seoul"
postal_code = "06236"
[primary_contact]
name = "${contactName}"
email = "${email}"
phone = "+82 2 555 0100"
[support]
email = "support@${email.split('@')[1]}"
phone = "+82 2 555 0199"
[mpn]
id = "1234567"
country = "KR"
`,
  );
  return f;
}

async function invite(email, company, locale, provider = 'contoso-kr') {
  const args = ['invite', '--provider', provider, '--email', email, '--company', company, '--country', 'KR'];
  if (locale) args.push('--locale', locale);
  return json(...args);
}

// ---------------------------------------------------------------------------------------------
// Phase 1: scanner simulation on fresh records, before any click on them

async function scannerPhase() {
  say('# scanner simulation: GET, HEAD and a browser that loads each page without clicking');
  const before0 = await knownMessageIds();
  // s1: invitation only (enrollment form page)
  const s1 = await invite('sora.han@alpine.test', 'Alpine Ski House Korea', 'ko-KR');
  // s2: invitation + enrollment by CLI (contact verification page)
  const s2 = await invite('dami.seo@bluesky.test', 'Blue Sky Korea', 'en-US');
  await json('enroll', '--file', enrollmentToml('dami.seo@bluesky.test', 'Blue Sky Korea', 'Seo Dami'));
  // s3: enrolled, verified by reply, approved (agreement page)
  const s3 = await invite('hana.yoon@cedar.test', 'Cedar Korea', 'en-US');
  const e3 = await json('enroll', '--file', enrollmentToml('hana.yoon@cedar.test', 'Cedar Korea', 'Yoon Hana'));
  const v3 = await waitMail('hana.yoon@cedar.test', 'contact_verification', before0);
  const r3 = await replyTo(v3, 'Yes, that is me.');
  check('scanner setup: a YES reply verifies the contact', r3.outcome === 'command', short(r3));
  check('scanner setup: enrollment in_review after the reply', (await waitState(e3.id, 'in_review')) === 'in_review');
  await json('review', 'approve', e3.id);
  // s4 and s5: enrolled, verified and agreement accepted by reply (active); s4 then authorizes by
  // reply (customer link), s5 is left with the authorization page.
  const active = [];
  for (const [email, company, name] of [
    ['jun.lim@delta.test', 'Delta Korea', 'Lim Jun'],
    ['yuna.kang@echo.test', 'Echo Korea', 'Kang Yuna'],
  ]) {
    const inv = await invite(email, company, 'en-US');
    const e = await json('enroll', '--file', enrollmentToml(email, company, name));
    await replyTo(await waitMail(email, 'contact_verification', before0), 'YES');
    await waitState(e.id, 'in_review');
    await json('review', 'approve', e.id);
    const seen = await knownMessageIds();
    const a = await waitMail(email, 'agreement_request', before0);
    const ra = await replyTo(a, 'ACCEPT');
    check(`scanner setup: ${email} agreement accepted by reply`, (await waitState(e.id, 'active')) === 'active', short(ra));
    const fresh = await waitMail(email, 'provider_invitation', seen);
    active.push({ email, inv, fresh });
  }
  const s4 = active[0];
  const ra4 = await replyTo(s4.fresh, 'AUTHORIZE');
  check('scanner setup: an AUTHORIZE reply (dmarc=pass) authorizes', (await waitState(s4.inv.id, 'authorized')) === 'authorized', short(ra4));
  const c = await json('invite-customer', '--provider', 'contoso-kr', '--reseller-email', s4.email, '--email', 'it@fourthcoffee.test', '--company', 'Fourth Coffee');
  await waitMail('it@fourthcoffee.test', 'customer_invitation', before0);
  await outboxSettled();

  // Every link in every email to these recipients, live or already used.
  const recipients = new Set([
    'sora.han@alpine.test', 'dami.seo@bluesky.test', 'hana.yoon@cedar.test',
    'jun.lim@delta.test', 'yuna.kang@echo.test', 'it@fourthcoffee.test',
  ]);
  const outbox = await json('outbox');
  const emls = emlByMessageId();
  const links = new Map(); // path -> kind
  for (const o of outbox) {
    if (!recipients.has(o.to.toLowerCase())) continue;
    const m = emls.get(o.message_id);
    if (m && m.link) links.set(m.link, `${o.kind} to ${o.to}`);
    // scanners open the unsubscribe link too (it is in the footer): it must change nothing
    if (m && m.unsubscribe) links.set(m.unsubscribe, `unsubscribe(${o.kind}) to ${o.to}`);
  }
  const kinds = new Set([...links.values()].map((k) => k.split(' ')[0]));
  check(
    'scanner: links of every kind to scan (invitation, verification, agreement, customer)',
    ['provider_invitation', 'contact_verification', 'agreement_request', 'customer_invitation'].every((k) => kinds.has(k)),
    [...kinds].join(', '),
  );

  const before = await snapshot();
  const ids = [s1.id, s2.id, s3.id, e3.id, s4.inv.id, active[1].inv.id, c.id];
  check('scanner: snapshot holds the fresh records', ids.every((i) => before.has(i)), short([...before.keys()]));

  let getOk = 0, headOk = 0, loads = 0, scripts = 0, crawled = 0;
  const badStatus = [];
  const pagesSeen = new Set();
  const reqStart = pageRequests.length;
  const page = await context.newPage();
  for (const [p, kind] of links) {
    const g = await fetch(url(p), { redirect: 'manual' });
    const gb = await g.text();
    if (g.status === 200 || g.status === 404) getOk++;
    else badStatus.push(`GET ${kind}: ${g.status}`);
    const h = await fetch(url(p), { method: 'HEAD', redirect: 'manual' });
    if (h.status === g.status) headOk++;
    else badStatus.push(`HEAD ${kind}: ${h.status} (GET ${g.status})`);
    if (g.status === 200) {
      // the page's primary form: the first `action` field on it
      const action = (gb.match(/name="action" value="([a-z_]+)"/) || [])[1]
        || (gb.match(/name="List-Unsubscribe" value="One-Click"/) ? 'one_click' : undefined);
      pagesSeen.add(`${kind.split(' ')[0]}:${action}`);
    }
    const resp = await page.goto(url(p), { waitUntil: 'networkidle' });
    if (resp) loads++;
    scripts += await page.evaluate(() => document.scripts.length);
    await page.waitForTimeout(150); // time for any timer a script might have set
    // a crawling scanner also follows every link on the page (the language switch)
    const hrefs = await page.evaluate(() => [...document.querySelectorAll('a[href]')].map((a) => a.href));
    for (const href of hrefs) {
      if (!href.startsWith(url('/'))) continue;
      await (await fetch(href)).text();
      crawled++;
    }
    await artifact(page, `scanner-${kind.split(' ')[0]}`);
  }
  await page.close();
  const offsite = pageRequests.slice(reqStart).filter((r) => !r.url.startsWith(url('/')));
  const posts = pageRequests.slice(reqStart).filter((r) => r.method !== 'GET');
  check(`scanner: ${links.size} links answered GET with 200 or the generic 404`, getOk === links.size && links.size > 0, badStatus.join('; '));
  check('scanner: HEAD answers as GET does', headOk === links.size, badStatus.join('; '));
  check(
    'scanner: the live pages were the enrollment form, verification, agreement, authorization, customer and unsubscribe pages',
    [
      'provider_invitation:enroll',
      'provider_invitation:authorize',
      'contact_verification:confirm',
      'agreement_request:accept',
      'customer_invitation:accept',
      'unsubscribe(provider_invitation):one_click',
    ].every((a) => pagesSeen.has(a)),
    [...pagesSeen].join(', '),
  );
  check(`scanner: Chromium loaded ${loads} pages to network idle; no scripts on them`, loads === links.size && scripts === 0, `scripts=${scripts}`);
  check('scanner: the pages requested nothing off the daemon and sent no POST', offsite.length === 0 && posts.length === 0, short([...offsite, ...posts]));
  note(`scanner followed ${crawled} on-page links (language switches) too`);

  await sleep(500); // > poll and timer intervals: anything a load set in motion would show now
  const after = await snapshot();
  const diff = (field) =>
    [...before]
      .filter(([id, b]) => !after.has(id) || after.get(id)[field] !== b[field])
      .map(([id, b]) => `${id}: ${b[field]} → ${after.has(id) ? after.get(id)[field] : 'gone'}`);
  const changed = diff('state');
  const grown = diff('history');
  check(`scanner: 0 of ${before.size} records changed state`, changed.length === 0 && after.size === before.size, changed.join('; '));
  check('scanner: every history length unchanged', grown.length === 0, grown.join('; '));
  const suppressed = await json('suppress', 'list');
  check('scanner: no address was suppressed by opening unsubscribe links', suppressed.length === 0, short(suppressed));
}

// ---------------------------------------------------------------------------------------------
// Phase 2: every flow in Chromium from the link in the .eml

async function mainFlows() {
  say('# flows in Chromium from the links in the emails');
  const MINJI = 'minji.kim@fabrikam.test';
  const JISOO = 'jisoo.park@northwind.test';
  const seen0 = await knownMessageIds();

  // (a) invitations
  const minji = await invite(MINJI, 'Fabrikam Korea Ltd.', 'ko-KR');
  const jisoo = await invite(JISOO, 'Northwind Korea', 'en-US');
  check('(a) Minji and Jisoo invited', minji.state === 'invited' && jisoo.state === 'invited' && !minji.existing && !jisoo.existing, short([minji, jisoo]));
  const minjiMail = await waitMail(MINJI, 'provider_invitation', seen0);
  const jisooMail = await waitMail(JISOO, 'provider_invitation', seen0);
  check('(a) invitation emails carry a /t/ link and Auto-Submitted', !!minjiMail.link && !!jisooMail.link && minjiMail.autoSubmitted === 'auto-generated', short(minjiMail.autoSubmitted));

  const page = await context.newPage();

  // (b) enrollment form: first with errors, then right
  let resp = await page.goto(url(minjiMail.link));
  check('(b) invitation link opens the enrollment form (ko-KR, security headers)',
    resp.status() === 200 && (await page.locator('input[name=action][value=enroll]').count()) === 1 &&
      (await htmlLang(page)) === 'ko' && securityHeaders(resp),
    `status=${resp.status()} lang=${await htmlLang(page)} headers=${short(resp.headers())}`);
  check('(b) every form field has a label', (await unlabelled(page)).length === 0, short(await unlabelled(page)));
  await artifact(page, 'enroll');
  const values = {
    '#street': '123 Teheran-ro',
    '#city': '   ', // passes the browser's `required`, must fail on the server (blank)
    '#postal_code': '06236',
    '#contact_name': 'Kim Minji',
    '#contact_phone': '+82 2 555 0100',
    '#support_email': 'support@fabrikam.test',
    '#support_phone': '+82 2 555 0199',
    '#website': 'https://fabrikam.test',
    '#mpn_id': '6543210',
    '#mpn_country': 'JP',
  };
  check('(b) company and country are prefilled from the invitation',
    (await page.inputValue('#company')) === 'Fabrikam Korea Ltd.' && (await page.inputValue('#country')) === 'KR',
    `${await page.inputValue('#company')} / ${await page.inputValue('#country')}`);
  for (const [sel, v] of Object.entries(values)) await page.fill(sel, v);
  await page.selectOption('#locale', 'ko-KR');
  resp = await submitBy(page, 'form:has(input[name=action][value=enroll]) button[type=submit]');
  await artifact(page, 'enroll-errors');
  check('(b) a form with errors is answered 422 with the form again', resp.status() === 422 && (await page.locator('input[name=action][value=enroll]').count()) === 1, `status=${resp.status()}`);
  for (const field of ['mpn_country', 'city']) {
    const info = await page.evaluate((f) => {
      const input = document.getElementById(f);
      const err = document.getElementById(`${f}-error`);
      return {
        invalid: input && input.getAttribute('aria-invalid'),
        describedby: input && (input.getAttribute('aria-describedby') || ''),
        text: err ? err.textContent.trim() : null,
        visible: !!(err && err.offsetParent !== null),
        sameField: !!(input && err && input.closest('.field') && input.closest('.field') === err.closest('.field')),
      };
    }, field);
    check(`(b) the error for ${field} is shown next to it (aria-invalid, aria-describedby)`,
      info.invalid === 'true' && info.describedby.split(/\s+/).includes(`${field}-error`) && !!info.text && info.visible && info.sameField,
      short(info));
  }
  {
    const top = await page.evaluate(() => ({
      title: document.title,
      summary: !!document.querySelector('#form-error, .notice-error, [role=alert]'),
      focused: document.activeElement && document.activeElement.id,
    }));
    if (!top.summary) {
      note(`the enrollment form answered with field errors has no error summary at the top, its <title> ("${top.title}") does not say there is an error, and focus is on ${top.focused ? `#${top.focused}` : 'nothing'}: a person sees the same top of the page as before and must scroll to find the errors`);
    }
  }
  const kept = {};
  for (const sel of Object.keys(values)) kept[sel] = await page.inputValue(sel);
  check('(b) typed values are kept',
    Object.entries(values).every(([s, v]) => s === '#city' || kept[s] === v) && (await page.inputValue('#locale')) === 'ko-KR',
    short(kept));
  const noEnrollment = (await json('list', 'enrollments')).filter((e) => e.email === MINJI).length === 0;
  check('(b) nothing was enrolled and the invitation is still invited', noEnrollment && (await stateOf(minji.id)) === 'invited');
  await page.fill('#city', 'Seoul');
  await page.fill('#mpn_country', 'KR');
  const seen1 = await knownMessageIds();
  resp = await submitBy(page, 'form:has(input[name=action][value=enroll]) button[type=submit]');
  await artifact(page, 'enroll-done');
  check('(b) the corrected form is accepted: result page', resp.status() === 200 && (await page.locator('main.result-done').count()) === 1, `status=${resp.status()} h1=${await h1(page)}`);
  const enrollments = (await json('list', 'enrollments')).filter((e) => e.email === MINJI);
  check('(b) one enrollment, pending_verification, contact = the invited address', enrollments.length === 1 && enrollments[0].state === 'pending_verification', short(enrollments));
  const enr = enrollments[0];
  {
    const s = await show(enr.id);
    const e = s.enrollment || {};
    check('(b) the enrollment holds what was typed',
      JSON.stringify(s).includes('123 Teheran-ro') && JSON.stringify(s).includes('Seoul') && JSON.stringify(e).includes('6543210'),
      short(e));
  }

  // (c) verify the contact from the verification email
  const ver = await waitMail(MINJI, 'contact_verification', seen1);
  resp = await page.goto(url(ver.link));
  check('(c) verification link opens the confirm page', resp.status() === 200 && (await page.locator('input[name=action][value=confirm]').count()) === 1, `status=${resp.status()}`);
  await artifact(page, 'verify');
  check('(c) opening it changed nothing', (await stateOf(enr.id)) === 'pending_verification');
  resp = await submitBy(page, 'form:has(input[name=action][value=confirm]) button[type=submit]');
  await artifact(page, 'verify-done');
  check('(c) pressing the button → in_review', resp.status() === 200 && (await stateOf(enr.id)) === 'in_review', `status=${resp.status()} state=${await stateOf(enr.id)}`);
  // The result page's own language switch: what a person gets.
  {
    const sw = page.locator('.lang-switch a');
    if ((await sw.count()) === 1) {
      const r = await Promise.all([page.waitForNavigation(), sw.click()]).then(([x]) => x);
      const st = r ? r.status() : 0;
      const title = await h1(page).catch(() => '');
      if (st !== 200 || (await page.locator('main.result-invalid').count()) > 0) {
        note(`the language switch on a result page (after verifying) leads to HTTP ${st} "${title}" instead of the result in the other language`);
      }
      await artifact(page, 'verify-done-language-switch');
    }
  }

  // (d) staff approve
  const seen2 = await knownMessageIds();
  const approved = await json('review', 'approve', enr.id);
  check('(d) review approve → approved', approved.state === 'approved', short(approved.state));

  // (e) accept the agreement (with the keyboard)
  const agr = await waitMail(MINJI, 'agreement_request', seen2);
  resp = await page.goto(url(agr.link));
  check('(e) agreement link opens the agreement page', resp.status() === 200 && (await page.locator('input[name=action][value=accept]').count()) === 1, `status=${resp.status()}`);
  await artifact(page, 'agreement');
  const seen3 = await knownMessageIds();
  await page.focus('#consent');
  await page.keyboard.press('Space');
  check('(e) the consent box ticks with the keyboard', await page.isChecked('#consent'));
  await page.focus('form:has(input[name=action][value=accept]) button[type=submit]');
  const [accResp] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST'),
    page.keyboard.press('Enter'),
  ]);
  await page.waitForLoadState('load');
  await artifact(page, 'agreement-done');
  check('(e) accepting → active', accResp.status() === 200 && (await stateOf(enr.id)) === 'active', `status=${accResp.status()}`);

  // (f) the invitation is re-sent with a fresh link: the authorization page
  const fresh = await waitMail(MINJI, 'provider_invitation', seen3);
  check('(f) a fresh invitation link was sent after activation', fresh.link && fresh.link !== minjiMail.link);
  const old = await fetch(url(minjiMail.link));
  check('(f) the old invitation link is no longer valid', old.status === 404, `status=${old.status}`);
  {
    const r = await page.goto(url(minjiMail.link));
    await artifact(page, 'old-link');
    const sw = page.locator('.lang-switch a');
    if (r && r.status() === 404 && (await sw.count()) === 1) {
      const href = await sw.getAttribute('href');
      const direct = await fetch(url(href));
      const directBody = await direct.text();
      const [nav] = await Promise.all([page.waitForNavigation().catch((e) => e), sw.click()]);
      await page.waitForLoadState('load').catch(() => {});
      const shown = (await page.locator('body').innerText().catch(() => '')).replace(/\s+/g, ' ').trim();
      await artifact(page, 'old-link-language-switch');
      if (direct.status !== 200 || !directBody.includes('<main')) {
        const how = nav instanceof Error ? nav.message.split('\n')[0] : `HTTP ${nav && nav.status()}`;
        note(`the language switch on the "link is no longer valid" page points to ${href}, which answers HTTP ${direct.status} with ${directBody.length} bytes; Chromium: ${how}, shows "${short(shown)}"`);
      }
    }
  }
  resp = await page.goto(url(fresh.link));
  check('(f) the fresh link opens the authorization page in Korean',
    resp.status() === 200 && (await page.locator('input[name=action][value=authorize]').count()) === 1 && (await htmlLang(page)) === 'ko' && securityHeaders(resp),
    `status=${resp.status()} lang=${await htmlLang(page)}`);
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, 'authorize-ko-KR.png'), fullPage: true });
  await artifact(page, 'authorize');
  // language switch: ko → en → ko → en
  const langs = [await htmlLang(page)];
  for (let i = 0; i < 3; i++) {
    await Promise.all([page.waitForNavigation(), page.locator('.lang-switch a').click()]);
    langs.push(await htmlLang(page));
    if (i === 0) {
      await page.screenshot({ path: path.join(SHOTS, 'authorize-en-US.png'), fullPage: true });
      await artifact(page, 'authorize');
    }
  }
  check('(f) the visible language switch flips <html lang> ko → en → ko → en', langs.join(',') === 'ko,en,ko,en', langs.join(','));
  const text = (await page.locator('main').innerText()).replace(/\s+/g, ' ');
  check('(f) the page says who asks and what is granted',
    text.includes('Contoso Distribution Korea') && text.includes('Fabrikam Korea Ltd.') &&
      /place orders and add subscriptions/.test(text) && /administrator access/.test(text) && /remove/.test(text),
    short(text));
  check('(f) the page says whether the country is in the provider\'s markets', /KR is one of Contoso Distribution Korea's markets/.test(text), short(text));
  const authButton = page.getByRole('button', { name: 'Authorize indirect provider' });
  check('(f) the "Authorize indirect provider" button and a Decline button are there',
    (await authButton.count()) === 1 && (await page.getByRole('button', { name: 'Decline' }).count()) === 1);
  // Unticked: the browser's `required` blocks the submission.
  const urlBefore = page.url();
  const h1Before = await h1(page);
  const postsBefore = pageRequests.filter((r) => r.method === 'POST').length;
  await authButton.click();
  await page.waitForTimeout(700);
  const postsAfter = pageRequests.filter((r) => r.method === 'POST').length;
  const valueMissing = await page.evaluate(() => { const c = document.getElementById('consent'); return c ? c.validity.valueMissing : null; });
  check('(f) unticked: clicking "Authorize indirect provider" sends nothing and the page stays',
    postsAfter === postsBefore && page.url() === urlBefore && (await h1(page)) === h1Before && valueMissing,
    `posts ${postsBefore}→${postsAfter} url=${page.url()} valueMissing=${valueMissing}`);
  check('(f) unticked: the invitation is still invited', (await stateOf(minji.id)) === 'invited');
  await page.check('#consent');
  resp = await submitBy(page, 'form:has(input[name=action][value=authorize]) button[type=submit]');
  await artifact(page, 'authorize-done');
  check('(f) ticked and pressed → authorized', resp.status() === 200 && (await page.locator('main.result-done').count()) === 1 && (await stateOf(minji.id)) === 'authorized', `status=${resp.status()}`);
  const resellers = await json('list', 'resellers', '--provider', 'contoso-kr');
  const providers = await json('list', 'providers', '--reseller-email', MINJI);
  check('(f) each side lists the other',
    resellers.some((r) => r.email === MINJI) && providers.some((p) => p.provider === 'contoso-kr'), short([resellers, providers]));

  // (g) Jisoo declines from the enrollment form page
  const seen4 = await knownMessageIds();
  resp = await page.goto(url(jisooMail.link));
  check('(g) Jisoo\'s link opens the enrollment form in English with a Decline form',
    resp.status() === 200 && (await htmlLang(page)) === 'en' && (await page.locator('input[name=action][value=decline]').count()) === 1,
    `status=${resp.status()} lang=${await htmlLang(page)}`);
  await artifact(page, 'enroll');
  resp = await submitBy(page, 'form:has(input[name=action][value=decline]) button[type=submit]');
  await artifact(page, 'decline-done');
  check('(g) Decline → declined', resp.status() === 200 && (await stateOf(jisoo.id)) === 'declined', `status=${resp.status()}`);
  const notice = await waitMail('ops@contoso.test', 'provider_notice', seen4).catch(() => null);
  check('(g) the provider is told', !!notice);

  // (h) a customer invitation, accepted with consent
  const seen5 = await knownMessageIds();
  const cust = await json('invite-customer', '--provider', 'contoso-kr', '--reseller-email', MINJI, '--email', 'it@adatum.test', '--company', 'Adatum Corp');
  check('(h) invite-customer → invited', cust.state === 'invited', short(cust));
  const cm = await waitMail('it@adatum.test', 'customer_invitation', seen5);
  resp = await page.goto(url(cm.link));
  const ctext = (await page.locator('main').innerText()).replace(/\s+/g, ' ');
  check('(h) the customer page names the reseller and the provider',
    resp.status() === 200 && ctext.includes('Fabrikam Korea Ltd.') && ctext.includes('Contoso Distribution Korea') && ctext.includes('Adatum Corp'),
    short(ctext));
  await artifact(page, 'customer');
  await page.check('#consent');
  resp = await submitBy(page, 'form:has(input[name=action][value=accept]) button[type=submit]');
  await artifact(page, 'customer-done');
  const cs = await show(cust.id);
  const rel = (cs.relationships || []).map((r) => r.kind);
  check('(h) accepting → accepted', resp.status() === 200 && cs.state === 'accepted', `status=${resp.status()} state=${cs.state}`);
  check('(h) show lists 2 relationships (reseller–customer and provider–customer)',
    rel.length === 2 && rel.includes('reseller_customer') && rel.includes('provider_customer'), short(cs.relationships));
  // The result page is safe to reload (Chromium re-sends the POST).
  const hist = cs.history.length;
  const reload = await page.reload();
  await artifact(page, 'customer-done-reloaded');
  const cs2 = await show(cust.id);
  check('(h) reloading the result page changes nothing',
    cs2.state === 'accepted' && cs2.history.length === hist && (cs2.relationships || []).length === 2,
    `status=${reload && reload.status()} history ${hist}→${cs2.history.length}`);
  if (reload) note(`reloading the customer result page (POST re-sent) shows HTTP ${reload.status()} "${await h1(page)}"`);

  // (i) unsubscribe from an invitation's List-Unsubscribe link, by the confirm page's button
  const LEE = 'lee@woodgrove.test';
  const seen6 = await knownMessageIds();
  const lee = await invite(LEE, 'Woodgrove Korea', 'ko-KR');
  const lm = await waitMail(LEE, 'provider_invitation', seen6);
  check('(i) the invitation carries a List-Unsubscribe link', !!lm.unsubscribe, short(lm.unsubscribe));
  resp = await page.goto(url(lm.unsubscribe));
  check('(i) the unsubscribe link opens a confirm page (ko-KR, security headers); nothing changes yet',
    resp.status() === 200 && (await htmlLang(page)) === 'ko' && securityHeaders(resp) &&
      (await page.locator('input[name="List-Unsubscribe"][value="One-Click"]').count()) === 1 &&
      (await stateOf(lee.id)) === 'invited',
    `status=${resp.status()} lang=${await htmlLang(page)}`);
  await artifact(page, 'unsubscribe');
  resp = await submitBy(page, 'form:has(input[name="List-Unsubscribe"]) button[type=submit]');
  await artifact(page, 'unsubscribe-done');
  const suppressedNow = await json('suppress', 'list');
  check('(i) Unsubscribe → the invitation is declined and the address suppressed (channel link)',
    resp.status() === 200 && (await stateOf(lee.id)) === 'declined' &&
      suppressedNow.some((x) => x.email === LEE && x.provider === 'contoso-kr' && x.channel === 'link'),
    `status=${resp.status()} ${short(suppressedNow)}`);

  await page.close();
}

// ---------------------------------------------------------------------------------------------
// Cleanup, time limit, main

async function cleanup() {
  await closeBrowsers();
  await d.stop();
  try {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    fs.copyFileSync(d.log, path.join(ARTIFACTS, 'daemon.log'));
  } catch {
    /* no log */
  }
  removeProfiles();
  if (counts().failed === 0) fs.rmSync(dir, { recursive: true, force: true });
  else console.log(`# kept ${dir} (config, store, outbox, inbox, daemon.log)`);
}

function printDaemonLog() {
  try {
    const log = fs.readFileSync(path.join(ARTIFACTS, 'daemon.log'), 'utf8').split('\n').slice(-30).join('\n');
    console.log(`# daemon.log (last lines):\n${log.replace(/^/gm, '#   ')}`);
  } catch {
    /* none */
  }
}

async function main() {
  try {
    for (const n of fs.readdirSync(ARTIFACTS)) {
      if (/^\d\d-.*\.png$/.test(n) || n === 'daemon.log') fs.rmSync(path.join(ARTIFACTS, n));
    }
  } catch {
    /* no artifacts yet */
  }
  console.log(`# invited browser flows: ${BIN}, Chromium ${CHROMIUM}, temp dir ${dir}`);
  if (!check('the invited binary exists', fs.existsSync(BIN), `${BIN} (run cargo build)`)) return;
  d.start();
  try {
    await d.ready();
    httpBase = (await d.status()).http;
  } catch (e) {
    check('the daemon starts and answers on its admin socket', false, e.message);
    return;
  }
  check('the daemon starts; HTTP address from GET /v1/status', /^127\.0\.0\.1:\d+$/.test(httpBase || ''), String(httpBase));
  const hz = await fetch(url('/healthz')).catch((e) => ({ status: e.message }));
  check('GET /healthz answers 200', hz.status === 200, String(hz.status));
  try {
    await startBrowser();
  } catch (e) {
    check('Chromium starts', false, e.message);
    return;
  }
  await phase('scanner simulation', scannerPhase);
  await phase('browser flows', mainFlows);
  check('the daemon is still running', !d.exited, JSON.stringify(d.exited));
}

await run({ timeLimitMs: TIME_LIMIT_MS, main, cleanup, afterFailure: printDaemonLog });
