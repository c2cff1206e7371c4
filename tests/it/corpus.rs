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
    effect: String,
    note: String,
}

fn app(dir: &Path) -> Arc<App> {
    let text = crate::harness::config_text(&crate::harness::Options::default());
    let path = dir.join("invited.toml");
    std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    let cfg = invited::config::Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let shared = invited::daemon::load_shared(cfg.clone()).unwrap_or_else(|e| panic!("{e}"));
    let store =
        invited::store::Store::open(&cfg.store_path, 8_000_000).unwrap_or_else(|e| panic!("{e}"));
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
        files.len() >= 25,
        "the corpus holds at least 25 messages, found {}",
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
        if out.outcome != expect.outcome || effect != expect.effect {
            failures.push(format!(
                "{}: expected {}/{} got {}/{} ({}) — {}",
                f.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                expect.outcome,
                expect.effect,
                out.outcome,
                effect,
                out.effect,
                expect.note
            ));
        }
        let _ = (&expect.keyword, &expect.bounce, &expect.from);
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
