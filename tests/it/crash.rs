//! `kill -9` right after a CLI command returns: after restart the record and its queued email
//! are there. Repeated, because sled's durability is the thing under test.

use crate::harness::{Daemon, Options};

#[test]
fn kill9_after_ack_loses_nothing() {
    let mut d = Daemon::start(Options::default());
    let mut ids = Vec::new();
    for round in 0..5 {
        let email = format!("crash{round}@fabrikam.test");
        let r = d.invite(&email, "Fabrikam");
        let id = r["id"].as_str().unwrap_or_default().to_string();
        d.kill9();
        d.spawn();
        ids.push((id, email));
        for (id, email) in &ids {
            let shown = d.json(&["show", id]);
            assert_eq!(shown["state"], "invited", "round {round}: {id}");
            let outbox = d.json(&["outbox"]);
            let item = outbox
                .as_array()
                .and_then(|a| a.iter().find(|i| i["to"] == email.as_str()).cloned());
            assert!(
                item.is_some(),
                "round {round}: the queued email for {email} survived"
            );
        }
    }
    // and every one of them is eventually written exactly once
    for (_, email) in &ids {
        let m = d.wait_mails(email, "", 1);
        assert_eq!(m.len(), 1, "{email}");
    }
}

/// The short form of the sending crash campaign (`bench/crash-send`, run in full by hand): a bulk
/// send of 1,500 invitations at concurrency 4 into `smtp-sink`, which records every message it
/// accepted, `kill -9` three times at random moments and a restart each time. Nothing may be
/// lost, every start must open the store, and no kill may cost more re-sends than the daemon can
/// have accepted by the server without a durable mark: one per connection (the concurrency).
#[test]
fn kill9_during_a_bulk_send_loses_nothing_and_resends_only_what_was_in_flight() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let figures = dir.path().join("figures.json");
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/crash-send"))
        .args(["--kills", "3", "--messages", "1500", "--concurrency", "4"])
        .args(["--segment-timeout", "60", "--drain-timeout", "90", "--json"])
        .arg(&figures)
        .env("INVITED_BIN", crate::harness::BIN)
        .env("TMPDIR", dir.path())
        .output()
        .unwrap_or_else(|e| panic!("bench/crash-send: {e}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let f: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&figures).unwrap_or_else(|e| panic!("no figures ({e}): {report}")),
    )
    .unwrap_or_else(|e| panic!("{e}: {report}"));
    assert_eq!(f["kills"], 3, "{report}");
    assert_eq!(f["lost"], 0, "{report}");
    assert_eq!(f["unexpected"], 0, "{report}");
    assert_eq!(f["not_sent"], 0, "{report}");
    assert_eq!(f["outbox"], 1500, "{report}");
    assert_eq!(f["failed_starts"], serde_json::json!([]), "{report}");
    assert_eq!(f["starts"], 4, "{report}");
    assert_eq!(f["duplicates_without_a_kill"], 0, "{report}");
    let bound = 4;
    assert_eq!(f["in_flight_bound"], bound, "{report}");
    let per_kill = f["duplicates_per_kill"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(per_kill.len(), 3, "{report}");
    for n in per_kill {
        assert!(n.as_u64().is_some_and(|n| n <= bound), "{report}");
    }
    assert!(out.status.success(), "{report}");
}
