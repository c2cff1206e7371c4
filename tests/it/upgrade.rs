//! Upgrades: a store written by the previous release is migrated once; a store from a newer
//! release is refused with a message saying so.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::harness::{Daemon, Options, BIN};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{e}"));
    for e in std::fs::read_dir(from)
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else if p.extension().is_none_or(|x| x != "md") {
            std::fs::copy(&p, to.join(e.file_name())).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[test]
fn a_store_from_the_previous_release_is_migrated_once() {
    if crate::harness::sled_only("the sled format migration") {
        return;
    }
    let mut d = Daemon::new(Options::default());
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/store-format-1");
    copy_dir(&fixture, &d.dir.path().join("store"));
    d.spawn();
    let list = d.json(&["list", "invitations"]);
    let mut emails: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["email"].as_str())
        .collect();
    emails.sort();
    assert_eq!(
        emails,
        ["a@fabrikam.test", "b@northwind.test", "c@adatum.test"],
        "{list}"
    );
    let outbox = d.json(&["outbox"]);
    assert_eq!(outbox.as_array().map(Vec::len), Some(3), "{outbox}");
    let migrated = |log: &str| log.matches("store migrated to the current format").count();
    assert_eq!(migrated(&d.log()), 1, "{}", d.log());
    assert!(d.log().contains("from=1"), "{}", d.log());
    // format 4: the three messages' reply references are read from their outbox items
    assert!(d.log().contains("refs=3"), "{}", d.log());
    // the old records read as before, history included
    let id = list[0]["id"].as_str().unwrap_or_default().to_string();
    let shown = d.json(&["show", &id]);
    assert_eq!(shown["kind"], "provider_authorization");
    assert!(
        shown["history"].as_array().is_some_and(|h| !h.is_empty()),
        "{shown}"
    );
    d.stop();
    d.spawn();
    assert_eq!(migrated(&d.log()), 1, "migrated once, not on every start");
}

#[test]
fn a_store_from_a_newer_release_is_refused() {
    if crate::harness::sled_only("the sled format check") {
        return;
    }
    let d = Daemon::new(Options::default());
    let store = d.dir.path().join("store");
    {
        let db = sled::open(&store).unwrap_or_else(|e| panic!("{e}"));
        let tree = db.open_tree("invited").unwrap_or_else(|e| panic!("{e}"));
        tree.insert(b"k/format", b"99".to_vec())
            .unwrap_or_else(|e| panic!("{e}"));
        tree.insert(b"r/x", b"{}".to_vec())
            .unwrap_or_else(|e| panic!("{e}"));
        db.flush().unwrap_or_else(|e| panic!("{e}"));
    }
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&d.config)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("store format 99 is newer")
            && err.contains(&format!("format {}", invited::store::FORMAT)),
        "{err}"
    );
    // nothing was changed: the mark is still 99
    let db = sled::open(&store).unwrap_or_else(|e| panic!("{e}"));
    let tree = db.open_tree("invited").unwrap_or_else(|e| panic!("{e}"));
    let mark = tree.get(b"k/format").ok().flatten().map(|v| v.to_vec());
    assert_eq!(mark.as_deref(), Some(&b"99"[..]));
}
