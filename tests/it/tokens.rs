//! Every bad link gets the same generic page and changes nothing: tampered, expired, wrong
//! purpose, old generation (after resend), replayed.

use crate::harness::{Daemon, Options};
use invited::model::{Email, Purpose, RecordId};
use invited::token::{Claims, Keys};

fn keys_of(d: &Daemon) -> Keys {
    let mut files = std::collections::BTreeMap::new();
    files.insert("k1".to_string(), d.dir.path().join("keys/k1.key"));
    Keys::load("k1", &files).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_bad_link_gets_the_same_page_and_changes_nothing() {
    let d = Daemon::start(Options::default());
    let (id, m) = d.invite_one("han@proseware.test", "Proseware");
    let good = m.link_path();
    let generic = d.get("/t/not-a-token");
    assert_eq!(generic.status, 404);

    let mut bad: Vec<(String, String)> = Vec::new();
    // tampered: one character changed in the middle
    let mut t: Vec<char> = good.chars().collect();
    let mid = t.len() / 2;
    t[mid] = if t[mid] == 'A' { 'B' } else { 'A' };
    bad.push(("tampered".into(), t.into_iter().collect()));
    // truncated
    bad.push(("truncated".into(), good[..good.len() - 4].to_string()));
    // wrong purpose, correctly signed with the daemon's own key
    let keys = keys_of(&d);
    let rid = RecordId::parse(&id).unwrap_or_else(|| panic!("id"));
    let email = Email::parse("han@proseware.test").unwrap_or_else(|e| panic!("{e}"));
    let far = chrono::Utc::now().timestamp() + 86400;
    let wrong = keys.sign(
        &Claims {
            purpose: Purpose::AcceptCustomer,
            record: rid,
            generation: 0,
            expires_at: far,
        },
        &email,
    );
    bad.push(("wrong purpose".into(), format!("/t/{wrong}")));
    // wrong recipient bound
    let other = Email::parse("someone@proseware.test").unwrap_or_else(|e| panic!("{e}"));
    let stolen = keys.sign(
        &Claims {
            purpose: Purpose::AuthorizeProvider,
            record: rid,
            generation: 0,
            expires_at: far,
        },
        &other,
    );
    bad.push(("other recipient".into(), format!("/t/{stolen}")));
    // expired, correctly signed
    let past = chrono::Utc::now().timestamp() - 1;
    let expired = keys.sign(
        &Claims {
            purpose: Purpose::AuthorizeProvider,
            record: rid,
            generation: 0,
            expires_at: past,
        },
        &email,
    );
    bad.push(("expired".into(), format!("/t/{expired}")));
    // a sanity check that the forging above is right: the same claims unexpired are accepted
    let fine = keys.sign(
        &Claims {
            purpose: Purpose::AuthorizeProvider,
            record: rid,
            generation: 0,
            expires_at: far,
        },
        &email,
    );
    assert_eq!(
        d.get(&format!("/t/{fine}")).status,
        200,
        "a correctly signed current token works"
    );

    // old generation: resend issues a fresh link and kills the old one
    let resent = d.json(&["resend", &id]);
    assert_eq!(resent["state"], "invited");
    bad.push(("old generation".into(), good.clone()));
    let fresh = d
        .wait_mails("han@proseware.test", "", 2)
        .pop()
        .unwrap_or_else(|| panic!("mail"))
        .link_path();
    assert_ne!(fresh, good);

    for (what, path) in &bad {
        for method in ["GET", "POST"] {
            let r = if method == "GET" {
                d.get(path)
            } else {
                d.post(path, &[("action", "authorize"), ("consent", "on")])
            };
            assert_eq!(r.status, generic.status, "{what} {method}");
            assert_eq!(
                r.body, generic.body,
                "{what} {method}: the same page for every failure"
            );
        }
        assert_eq!(d.state(&id), "invited", "{what}: no state change");
    }

    // replay: decline with the fresh link, then every further use gets the generic page on GET
    let r = d.post(&fresh, &[("action", "decline")]);
    assert_eq!(r.status, 200);
    let replay = d.get(&fresh);
    assert_eq!(
        (replay.status, &replay.body),
        (generic.status, &generic.body)
    );
    let replay_other = d.post(&fresh, &[("action", "authorize"), ("consent", "on")]);
    assert_eq!(
        (replay_other.status, &replay_other.body),
        (generic.status, &generic.body)
    );
    assert_eq!(d.state(&id), "declined");
    assert_eq!(
        d.json(&["show", &id])["history"]
            .as_array()
            .map(|h| h.iter().filter(|t| t["to"] == "declined").count()),
        Some(1)
    );
}

#[test]
fn concurrent_posts_of_one_token_make_one_transition() {
    let d = Daemon::start(Options::default());
    let (id, mail) = d.invite_one("yoon@relecloud.test", "Relecloud");
    let link = mail.link_path();
    let addr = d.http.clone();
    // 100 clients post the same token at once (a double-clicking contact, a retrying proxy…)
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(100));
    let handles: Vec<_> = (0..100)
        .map(|_| {
            let (addr, link, barrier) = (addr.clone(), link.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                crate::harness::http(&addr, "POST", &link, Some("action=decline"))
            })
        })
        .collect();
    let responses: Vec<_> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
    assert_eq!(responses.len(), 100);
    let done = responses
        .iter()
        .filter(|r| r.status == 200 && r.body.contains("result-done"))
        .count();
    let already = responses
        .iter()
        .filter(|r| r.status == 200 && r.body.contains("result-already"))
        .count();
    let generic = responses.iter().filter(|r| r.status == 404).count();
    assert_eq!(done, 1, "exactly one success");
    assert_eq!(
        done + already + generic,
        100,
        "the rest get the already-done or the generic page; others: {:?}; log: {}",
        responses
            .iter()
            .filter(|r| !(r.status == 200 || r.status == 404))
            .map(|r| (r.status, r.body.chars().take(200).collect::<String>()))
            .collect::<Vec<_>>(),
        d.log()
    );
    let h = d.json(&["show", &id])["history"].clone();
    assert_eq!(
        h.as_array()
            .map(|a| a.iter().filter(|t| t["to"] == "declined").count()),
        Some(1),
        "one transition"
    );
    assert_eq!(h.as_array().map(Vec::len), Some(2));
}

#[test]
fn oversized_bodies_are_refused_and_change_nothing() {
    let d = Daemon::start(Options::default());
    let (id, mail) = d.invite_one("big@relecloud.test", "Relecloud");
    let link = mail.link_path();
    let huge = format!("action=decline&company={}", "A".repeat(200 * 1024));
    let r = crate::harness::http(&d.http, "POST", &link, Some(&huge));
    assert_eq!(r.status, 413, "body limit");
    assert_eq!(d.state(&id), "invited");
    // and the security headers are on every page, the generic one included
    for path in [link.as_str(), "/t/nope", "/healthz"] {
        let g = d.get(path);
        assert_eq!(g.header("referrer-policy"), Some("no-referrer"), "{path}");
        assert_eq!(g.header("cache-control"), Some("no-store"), "{path}");
        assert!(
            g.header("content-security-policy")
                .is_some_and(|c| c.contains("default-src 'none'")),
            "{path}"
        );
    }
}
