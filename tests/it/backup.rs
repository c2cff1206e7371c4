//! Backup while the daemon sends, restore into a fresh state directory, and the restored daemon
//! sends what was still queued.

use std::collections::HashSet;
use std::time::Duration;

use crate::harness::{wait_for, Daemon};
use crate::smtp::{free_port, smtp_options, Sink};

#[test]
fn a_backup_taken_mid_send_restores_everything_and_the_rest_is_sent() {
    if crate::harness::sled_only("`invited backup` copies the sled store (PostgreSQL: pg_dump)") {
        return;
    }
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sink = Sink::start(port, &tmp.path().join("sink"), &[]);
    let mut opts = smtp_options(port);
    // paced, so that the backup lands while most of the 2,000 are still queued
    opts.outbound = opts.outbound.map(|o| format!("{o}\nrate_per_second = 400"));
    let d = Daemon::start(opts.clone());
    let n = 2000;
    let emails: Vec<String> = (0..n).map(|i| format!("k{i}@fabrikam.test")).collect();
    assert_eq!(d.invite_csv(&emails)["queued"], n);
    wait_for("some messages sent", Duration::from_secs(30), || {
        (sink.message_ids().len() >= 100).then_some(())
    });
    let file = tmp.path().join("backup.bin");
    let file_s = file.to_str().unwrap_or_default();
    let b = d.json(&["backup", file_s]);
    assert_eq!(b["records"], n, "{b}");
    assert_eq!(b["outbox_items"], n, "sent or not, every item: {b}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode.ok(), Some(0o600));
    d.wait_all_sent(Duration::from_secs(60));
    drop(d);

    // a fresh state directory for a second daemon; `restore` refuses a non-empty one
    let mut r = Daemon::new(opts);
    let store = r.dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(store.join("x"), "").unwrap_or_else(|e| panic!("{e}"));
    let (ok, _, err) = r.cli(&[
        "restore",
        file_s,
        "--into",
        store.to_str().unwrap_or_default(),
    ]);
    assert!(!ok && err.contains("not empty"), "{err}");
    std::fs::remove_file(store.join("x")).unwrap_or_else(|e| panic!("{e}"));
    let restored = r.json(&[
        "restore",
        file_s,
        "--into",
        store.to_str().unwrap_or_default(),
    ]);
    assert_eq!(restored["records"], n);
    assert_eq!(restored["outbox_items"], n);

    let before = sink.message_ids().len();
    r.spawn();
    let list = r.json(&["list", "invitations"]);
    let restored_emails: HashSet<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["email"].as_str())
        .collect();
    assert_eq!(restored_emails.len(), n, "every record is back");
    let outbox = r.json(&["outbox"]);
    let queued = outbox
        .as_array()
        .map(|a| a.iter().filter(|i| i["state"] == "queued").count())
        .unwrap_or(0);
    assert!(queued > 0, "the backup caught messages still queued");
    r.wait_all_sent(Duration::from_secs(60));
    let after = wait_for(
        "the restored daemon's sends",
        Duration::from_secs(30),
        || {
            let ids = sink.message_ids();
            (ids.len() >= before + queued).then_some(ids)
        },
    );
    let unique: HashSet<&String> = after.iter().collect();
    assert_eq!(unique.len(), n, "every message reached the sink");
}

#[test]
fn a_damaged_backup_is_refused_before_anything_is_written() {
    if crate::harness::sled_only("`invited backup` copies the sled store (PostgreSQL: pg_dump)") {
        return;
    }
    let d = Daemon::start(crate::harness::Options::default());
    d.invite("a@fabrikam.test", "Fabrikam");
    let file = d.dir.path().join("b.bin");
    d.json(&["backup", file.to_str().unwrap_or_default()]);
    let mut bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{e}"));
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&file, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let into = d.dir.path().join("restored");
    let (ok, _, err) = d.cli(&[
        "restore",
        file.to_str().unwrap_or_default(),
        "--into",
        into.to_str().unwrap_or_default(),
    ]);
    assert!(!ok && err.contains("damaged"), "{err}");
    assert!(!into.exists(), "nothing written");
}
