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
