//! Inbound messages through the real pipeline (classify → match → transition → outcome):
//! our own reply corpus with expected outcomes, and the shared sisimai bounces.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use invited::app::{App, LinkForm, PostOutcome};
use invited::model::{Purpose, RecordId};
use invited::rules::EnrollFields;
use invited::token::Claims;
use serde::Deserialize;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Expect {
    outcome: String,
    keyword: Option<String>,
    bounce: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<String>,
    from: Option<String>,
    record: String,
    recipient: Option<String>,
    /// `true`: the record's link is re-sent (a new generation) after `ref` was taken, so the
    /// message answers or bounces the replaced email
    resend: Option<bool>,
    /// the Message-ID as stored and printed by `invited inbound`
    message_id: Option<String>,
    /// a piece of the effect text (as stored and printed)
    effect_contains: Option<String>,
    effect: String,
    note: String,
}

fn app(dir: &Path) -> Arc<App> {
    let text = crate::harness::config_text(&crate::harness::Options::default());
    let path = dir.join("invited.toml");
    std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    let cfg = invited::config::Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    crate::harness::give_key(path.parent().unwrap_or(&path));
    let shared = invited::daemon::load_shared(cfg.clone()).unwrap_or_else(|e| panic!("{e}"));
    let store = invited::store::Store::open(&cfg).unwrap_or_else(|e| panic!("{e}"));
    Arc::new(App::new(store, shared))
}

fn record(app: &App, id: RecordId) -> invited::model::Record {
    app.store
        .read()
        .record(&id)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("record {id}"))
}

/// Acts on a record through the link path, as a contact would.
async fn act(app: &App, id: RecordId, purpose: Purpose, action: &str) {
    let rec = record(app, id);
    let sh = app.shared();
    let token = sh.keys.sign(
        &Claims {
            purpose,
            record: id,
            generation: rec.generation,
            expires_at: rec.expires_at.map(|t| t.timestamp()).unwrap_or(0),
        },
        rec.recipient(),
    );
    let form = LinkForm {
        action: action.into(),
        consent: true,
        enroll: EnrollFields::default(),
    };
    let out = app
        .post_link(&token, &form, Utc::now())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(out, PostOutcome::Done { .. }),
        "acting {action} on {purpose:?}"
    );
}

fn enrollment_fields(email: &str) -> EnrollFields {
    EnrollFields {
        company: "Fabrikam Korea Ltd.".into(),
        country: "KR".into(),
        street: "1 Teheran-ro".into(),
        city: "Seoul".into(),
        postal_code: "06236".into(),
        contact_name: "Kim".into(),
        contact_email: email.into(),
        contact_phone: "+82 2 555 0100".into(),
        support_email: "support@fabrikam.test".into(),
        support_phone: "+82 2 555 0199".into(),
        website: String::new(),
        mpn_id: "6543210".into(),
        mpn_country: "KR".into(),
        locale: "en-US".into(),
    }
}

/// An enrollment for `email`, moved through its states up to `until` (a state name).
async fn enrollment(app: &App, email: &str, until: &str) -> RecordId {
    let (now, ch) = (Utc::now(), invited::model::Channel::Cli);
    let e = app
        .enroll(enrollment_fields(email), ch, now)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let steps = ["in_review", "approved", "active"];
    for step in steps
        .iter()
        .take(steps.iter().position(|s| *s == until).map_or(0, |i| i + 1))
    {
        match *step {
            "in_review" => act(app, e.id, Purpose::VerifyContact, "confirm").await,
            "approved" => {
                app.review(&e.id.to_string(), true, "", ch, now)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            _ => act(app, e.id, Purpose::AcceptAgreement, "accept").await,
        }
    }
    e.id
}

async fn invitation(app: &App, email: &str) -> RecordId {
    let row = invited::rules::InviteRow {
        email: email.into(),
        company: "Fabrikam".into(),
        country: "KR".into(),
        ..Default::default()
    };
    app.invite("contoso-kr", row, invited::model::Channel::Cli, Utc::now())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .id
}

/// Puts a record for `recipient` into the state that waits for `purpose`; returns its id.
async fn setup(app: &App, purpose: &str, recipient: &str) -> RecordId {
    match purpose {
        "verify_contact" => enrollment(app, recipient, "pending_verification").await,
        "accept_agreement" => enrollment(app, recipient, "approved").await,
        "authorize_provider" => {
            enrollment(app, recipient, "active").await;
            invitation(app, recipient).await
        }
        "accept_customer" => {
            let reseller = "reseller@fabrikam.test";
            enrollment(app, reseller, "active").await;
            let auth = invitation(app, reseller).await;
            act(app, auth, Purpose::AuthorizeProvider, "authorize").await;
            let req = invited::app::CustomerRequest {
                provider: "contoso-kr".into(),
                reseller_email: reseller.into(),
                email: recipient.into(),
                company: "Adatum".into(),
                locale: None,
            };
            app.invite_customer(&req, invited::model::Channel::Cli, Utc::now())
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .id
        }
        other => panic!("unknown record kind {other}"),
    }
}

/// The `<ref>` of the message carrying the link the record now waits for.
fn newest_ref(app: &App, id: RecordId) -> String {
    let rec = record(app, id);
    let items = app.store.read().outbox_all().unwrap_or_default();
    items
        .into_iter()
        .filter(|i| {
            i.record == id
                && i.link.as_ref().is_some_and(|l| {
                    Some(l.purpose) == rec.awaiting() && l.generation == rec.generation
                })
        })
        .max_by_key(|i| i.created_at)
        .map(|i| i.id)
        .unwrap_or_else(|| panic!("no linked message for {id}"))
}

fn corpus_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_corpus_has_its_expected_outcomes() {
    let files = corpus_files(Path::new("tests/data/replies"));
    assert!(
        files.len() >= 41,
        "the corpus holds at least 41 messages, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for f in &files {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let app = app(dir.path());
        let expect: Expect = toml::from_str(
            &std::fs::read_to_string(f.with_extension("expect.toml"))
                .unwrap_or_else(|e| panic!("{}: {e}", f.display())),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let mut raw = String::from_utf8_lossy(&std::fs::read(f).unwrap_or_default()).into_owned();
        let mut record = None;
        if expect.record != "none" {
            let recipient = expect
                .recipient
                .clone()
                .unwrap_or_else(|| panic!("{}: recipient", f.display()));
            let id = setup(&app, &expect.record, &recipient).await;
            let real = newest_ref(&app, id);
            if let Some(r) = &expect.reference {
                raw = raw.replace(r.as_str(), &real);
            }
            if expect.resend == Some(true) {
                app.resend(&id.to_string(), invited::model::Channel::Cli, Utc::now())
                    .await
                    .unwrap_or_else(|e| panic!("{}: resend: {e}", f.display()));
            }
            record = Some(id);
        }
        let before = record.map(|id| {
            app.store
                .read()
                .record(&id)
                .ok()
                .flatten()
                .map(|r| r.state_str())
                .unwrap_or_default()
        });
        let out = app
            .handle_inbound(raw.as_bytes(), Utc::now())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let Some(out) = out else {
            failures.push(format!("{}: not handled", f.display()));
            continue;
        };
        let after = record.map(|id| {
            app.store
                .read()
                .record(&id)
                .ok()
                .flatten()
                .map(|r| r.state_str())
                .unwrap_or_default()
        });
        let effect = match (before, after) {
            (Some(b), Some(a)) if a != b => a.to_string(),
            _ => "none".to_string(),
        };
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // what `invited inbound` prints and the log shows carries no raw control character
        for (field, text) in [
            ("message_id", &out.message_id),
            ("from", &out.from),
            ("effect", &out.effect),
        ] {
            if text.chars().any(invited::text::is_escaped) {
                failures.push(format!(
                    "{name}: raw control character in {field}: {text:?}"
                ));
            }
        }
        let checks = [
            (
                "from",
                expect.from.as_ref(),
                out.from == *expect.from.as_deref().unwrap_or(""),
            ),
            (
                "message_id",
                expect.message_id.as_ref(),
                out.message_id == *expect.message_id.as_deref().unwrap_or(""),
            ),
            (
                "effect_contains",
                expect.effect_contains.as_ref(),
                out.effect
                    .contains(expect.effect_contains.as_deref().unwrap_or("")),
            ),
        ];
        for (field, want, ok) in checks {
            if let (Some(want), false) = (want, ok) {
                failures.push(format!("{name}: {field} {want:?}, got {out:?}"));
            }
        }
        if out.outcome != expect.outcome || effect != expect.effect {
            failures.push(format!(
                "{}: expected {}/{} got {}/{} ({}) — {}",
                name, expect.outcome, expect.effect, out.outcome, effect, out.effect, expect.note
            ));
        }
        let _ = (&expect.keyword, &expect.bounce);
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus messages differ:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sisimai_bounces_never_act_and_never_panic() {
    let dir = Path::new("../shared/corpus/sisimai");
    let files = corpus_files(dir);
    if files.is_empty() {
        println!("skipped: {} is not here", dir.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let app = app(tmp.path());
    // a live record whose recipient and refs a bounce could only hit by accident
    let id = setup(&app, "authorize_provider", "postmaster@fabrikam.test").await;
    let mut by_outcome = std::collections::BTreeMap::<String, usize>::new();
    for f in &files {
        let raw = std::fs::read(f).unwrap_or_default();
        let out = app
            .handle_inbound(&raw, Utc::now())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if let Some(out) = out {
            assert_ne!(
                out.outcome,
                "command",
                "{} classified as a command",
                f.display()
            );
            *by_outcome.entry(out.outcome).or_default() += 1;
        }
    }
    let state = app
        .store
        .read()
        .record(&id)
        .ok()
        .flatten()
        .map(|r| r.state_str())
        .unwrap_or_default();
    assert_eq!(state, "invited", "no sisimai message changed a record");
    println!("sisimai: {} files, outcomes {by_outcome:?}", files.len());
}

fn inbound_all(app: &App) -> Vec<invited::store::InboundRecord> {
    app.store
        .read()
        .inbound_all()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn state(app: &App, id: RecordId) -> String {
    record(app, id).state_str().to_string()
}

/// A reply to `id`'s newest message, padded with quoted lines to `size` bytes.
fn big_reply(app: &App, id: RecordId, from: &str, message_id: &str, size: usize) -> Vec<u8> {
    let r = newest_ref(app, id);
    let mut raw = format!(
        "From: <{from}>\nTo: replies+{r}@invited.test\nSubject: Re: hello\n\
         Message-ID: <{message_id}>\nIn-Reply-To: <{r}@invited.test>\n\nYES\n\n"
    )
    .into_bytes();
    let line = b"> quoted text quoted text quoted text quoted text quoted text quoted text\n";
    while raw.len() < size {
        raw.extend_from_slice(line);
    }
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_ends_unrecognised_too_large_keyed_by_its_message_id() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let app = app(dir.path());
    let id = setup(&app, "verify_contact", "big@fabrikam.test").await;
    let raw = big_reply(
        &app,
        id,
        "big@fabrikam.test",
        "oversize-1@fabrikam.test",
        11 << 20,
    );
    let out = app
        .handle_inbound(&raw, Utc::now())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("handled"));
    assert_eq!(out.outcome, "unrecognised", "{out:?}");
    assert!(out.effect.contains("too large"), "{out:?}");
    assert_eq!(out.message_id, "oversize-1@fabrikam.test", "{out:?}");
    assert_eq!(out.from, "big@fabrikam.test", "{out:?}");
    assert_eq!(
        out.record,
        Some(id),
        "the record its header refers to is named"
    );
    assert_eq!(state(&app, id), "pending_verification", "nothing acted");
    // the same message again (a re-delivery) is recognised by its Message-ID
    let again = app.handle_inbound(&raw, Utc::now()).await;
    assert!(matches!(again, Ok(None)), "{again:?}");
    assert_eq!(inbound_all(&app).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maildir_moves_an_oversize_message_after_reading_only_its_head() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let app = app(dir.path());
    let id = setup(&app, "verify_contact", "huge@fabrikam.test").await;
    let inbox = dir.path().join("inbox");
    invited::maildir::prepare(&inbox).unwrap_or_else(|e| panic!("{e}"));
    let raw = big_reply(
        &app,
        id,
        "huge@fabrikam.test",
        "oversize-2@fabrikam.test",
        4096,
    );
    let file = inbox.join("new").join("1795500000.big.test");
    std::fs::write(&file, &raw).unwrap_or_else(|e| panic!("{e}"));
    // 64 MiB on paper, a few KB on disk: the rest is a hole that reads as zeros
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(64 << 20))
        .unwrap_or_else(|e| panic!("{e}"));
    let handled = invited::maildir::pass(&app, &inbox).await;
    assert_eq!(handled, 1);
    let all = inbound_all(&app);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0].outcome, "unrecognised", "{all:?}");
    assert!(all[0].effect.contains("too large"), "{all:?}");
    assert!(
        all[0].effect.contains(&(64u64 << 20).to_string()),
        "{all:?}"
    );
    assert_eq!(all[0].message_id, "oversize-2@fabrikam.test", "{all:?}");
    assert_eq!(all[0].record, Some(id), "{all:?}");
    assert!(!file.exists(), "moved out of new/");
    let cur = std::fs::read_dir(inbox.join("cur"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(cur, 1, "moved to cur/");
    assert_eq!(state(&app, id), "pending_verification");
    // a second pass finds nothing left to do
    assert_eq!(invited::maildir::pass(&app, &inbox).await, 0);
}

#[test]
fn hostile_reference_lists_keep_only_a_handful_of_refs() {
    let ids: Vec<String> = (0..5000u32)
        .map(|i| {
            // 26 distinct base32 characters per id, like our refs
            let mut n = i;
            (0..26)
                .map(|k| {
                    let c = b"abcdefghijklmnopqrstuvwxyz234567"[((n + k) % 32) as usize];
                    n /= 2;
                    c as char
                })
                .collect()
        })
        .collect();
    let references: String = ids
        .iter()
        .map(|r| format!(" <{r}@invited.test>\n"))
        .collect();
    let raw = format!(
        "From: a@fabrikam.test\nTo: replies@invited.test\nMessage-ID: <refs@fabrikam.test>\n\
         References:{references}\nYES\n"
    );
    let inbound = invited::classify::classify(raw.as_bytes(), "replies");
    // classify::MAX_REFS: a real message carries a handful
    assert!(
        !inbound.refs.is_empty() && inbound.refs.len() <= 16,
        "{} refs kept",
        inbound.refs.len()
    );
    // the first ids are the ones kept (a thread's root, where our Message-ID sits, comes first)
    assert_eq!(inbound.refs[0], ids[0]);

    // a plus address is `replies+<ref>@`, not `replies+<ref>` and an @ somewhere later
    let far = format!(
        "From: MAILER-DAEMON@f.test\nSubject: failure notice\nMessage-ID: <far@f.test>\n\n\
         replies+{}{}@x.test\n",
        ids[1],
        " ".repeat(100)
    );
    let inbound = invited::classify::classify(far.as_bytes(), "replies");
    assert!(inbound.refs.is_empty(), "{:?}", inbound.refs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_megabyte_bounce_of_repeated_plus_addresses_is_handled_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let app = app(dir.path());
    let id = setup(&app, "authorize_provider", "target@customer.test").await;
    let r = newest_ref(&app, id);
    // the shape from the issue: a body that repeats `replies+` (no @ until the very end), sent
    // to the plus address of a real invitation
    let mut raw = format!(
        "From: MAILER-DAEMON@attacker.test\nTo: replies@invited.test\n\
         Delivered-To: replies+{r}@invited.test\n\
         Subject: Undelivered Mail Returned to Sender\nMessage-ID: <plus-flood@attacker.test>\n\n"
    );
    while raw.len() < 10_000_000 {
        raw.push_str("replies+");
    }
    raw.push_str("@x.test\n");
    let out = app
        .handle_inbound(raw.as_bytes(), Utc::now())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("handled"));
    assert_eq!(out.outcome, "bounce", "{out:?}");
    assert_eq!(
        out.record,
        Some(id),
        "the plus address it was sent to is found"
    );
    assert_eq!(
        state(&app, id),
        "invited",
        "a notice that names no failed recipient changes nothing: {}",
        out.effect
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_notice_quotes_the_remote_server_clipped_and_without_control_characters() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let app = app(dir.path());
    let id = setup(&app, "authorize_provider", "gone@customer.test").await;
    let r = newest_ref(&app, id);
    // the remote server tries to end the quotation and speak in our voice, with an escape
    // sequence, and at length
    let diagnostic = format!(
        "smtp; 550 5.1.1 no such user\u{201d}. Contoso Distribution: \u{1b}[1mplease pay the \
         re-activation fee to IBAN XX00 0000{}",
        " and more".repeat(100)
    );
    let raw = format!(
        "From: MAILER-DAEMON@mx.customer.test\nTo: replies+{r}@invited.test\n\
         Subject: Undelivered Mail Returned to Sender\nMessage-ID: <notice-quote@mx.customer.test>\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n\
         --b\nContent-Type: text/plain\n\nfailed\n--b\nContent-Type: message/delivery-status\n\n\
         Reporting-MTA: dns; mx.customer.test\n\nFinal-Recipient: rfc822; gone@customer.test\n\
         Action: failed\nStatus: 5.1.1\nDiagnostic-Code: {diagnostic}\n--b--\n"
    );
    let out = app
        .handle_inbound(raw.as_bytes(), Utc::now())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("handled"));
    assert_eq!(state(&app, id), "undeliverable", "{out:?}");
    let items = app.store.read().outbox_all().unwrap_or_default();
    let notice = items
        .iter()
        .find(|i| i.kind == invited::outbox::MailKind::ProviderNotice && i.record == id)
        .unwrap_or_else(|| panic!("a provider notice"));
    let sh = app.shared();
    let sender = invited::outbox::Sender {
        from_name: &sh.cfg.from_name,
        from: &sh.cfg.from,
        reply_to: &sh.cfg.reply_to,
        public_url: &sh.cfg.public_url,
        keys: &sh.keys,
        templates: &sh.templates,
        dkim: None,
    };
    let rendered = sender.render(notice).unwrap_or_else(|e| panic!("{e}"));
    for body in [&rendered.text, &rendered.html] {
        assert!(!body.contains('\u{1b}'), "no raw escape:\n{body}");
        assert_eq!(
            body.matches('\u{201d}').count(),
            1,
            "no closing quote but ours:\n{body}"
        );
    }
    let quoted = rendered
        .text
        .split_once("The receiving mail server answered: \u{201c}")
        .and_then(|(_, q)| q.split_once('\u{201d}'))
        .map(|(q, _)| q)
        .unwrap_or_else(|| panic!("a quotation of the server:\n{}", rendered.text));
    assert!(
        quoted.starts_with(
            "5.1.1 550 5.1.1 no such user\". Contoso Distribution: \\u{1b}[1mplease pay"
        ),
        "{quoted}"
    );
    assert!(quoted.chars().count() <= 301, "clipped: {quoted}");
    assert!(rendered
        .html
        .contains("The receiving mail server answered:"));
}

#[test]
fn escape_sequences_from_a_sender_reach_neither_the_log_nor_invited_inbound_raw() {
    let d = crate::harness::Daemon::start(crate::harness::Options::default());
    let raw =
        std::fs::read("tests/data/replies/escape-sequences.eml").unwrap_or_else(|e| panic!("{e}"));
    d.deliver("1795500001.esc.test", &String::from_utf8_lossy(&raw));
    let shown = d.wait_inbound("esc\\u{1b}[2Jid@attacker.test");
    assert_eq!(shown["from"], "eve\\u{1b}[31m@attacker.test", "{shown}");
    let (ok, text, err) = d.cli(&["inbound"]);
    assert!(ok, "{err}");
    assert!(
        !text
            .chars()
            .any(|c| c != '\n' && invited::text::is_escaped(c)),
        "invited inbound has a raw control character:\n{text:?}"
    );
    // The log has the daemon's own colour codes (tracing's ANSI output); none of the sender's
    // sequences may be there raw. The line is written once the outcome is durable, which can be
    // a moment after the outcome shows.
    crate::harness::wait_for(
        "the inbound line in the log",
        std::time::Duration::from_secs(10),
        || {
            d.log()
                .contains("esc\\u{1b}[2Jid@attacker.test")
                .then_some(())
        },
    );
    let log = d.log();
    for raw in [
        "\u{1b}[2J",
        "\u{1b}[H",
        "\u{1b}]8;;",
        "\u{7}",
        "\u{9b}",
        "\u{202e}",
    ] {
        assert!(!log.contains(raw), "the daemon log has {raw:?}:\n{log:?}");
    }
    assert!(log.contains("esc\\u{1b}[2Jid@attacker.test"), "{log}");
}
