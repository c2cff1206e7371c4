//! SMTP faults from Postfix's `smtp-sink`: temporary rejections then acceptance, permanent
//! rejection, and connections dropped after DATA. The daemon's SMTP transport talks to a real
//! SMTP server on loopback; nothing leaves the machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{wait_for, Daemon, Options};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// One `smtp-sink` process; killed on drop.
pub struct Sink {
    child: Child,
    pub dump: PathBuf,
}

impl Sink {
    pub fn start(port: u16, dump: &Path, faults: &[&str]) -> Sink {
        std::fs::create_dir_all(dump).unwrap_or_else(|e| panic!("{e}"));
        // smtp-sink drops root privileges to -u; the dump folder must be writable by that user
        let _ = Command::new("chmod").arg("0777").arg(dump).status();
        let mut cmd = Command::new("smtp-sink");
        cmd.arg("-u")
            .arg("nobody")
            .arg("-d")
            .arg(format!("{}/%H%M%S.", dump.display()));
        cmd.args(faults);
        cmd.arg(format!("127.0.0.1:{port}")).arg("64");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("smtp-sink (installed by scripts/mailstack install): {e}"));
        wait_for("smtp-sink to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        });
        Sink {
            child,
            dump: dump.to_path_buf(),
        }
    }

    /// Message-IDs of every message the sink accepted and dumped.
    pub fn message_ids(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dump)
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("Message-ID:") {
                    out.push(v.trim().trim_matches(['<', '>']).to_string());
                    break;
                }
            }
        }
        out
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn smtp_options(port: u16) -> Options {
    Options {
        outbound: Some(format!(
            "transport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nconcurrency = 2"
        )),
        ..Options::default()
    }
}

fn outbox_item(d: &Daemon, to: &str) -> serde_json::Value {
    d.json(&["outbox"])
        .as_array()
        .and_then(|a| a.iter().find(|i| i["to"] == to).cloned())
        .unwrap_or_else(|| panic!("no outbox item to {to}"))
}

#[test]
fn temporary_failures_are_retried_with_the_same_message_id() {
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = Daemon::start(smtp_options(port));
    let rejecting = Sink::start(port, &tmp.path().join("rejected"), &["-r", "rcpt"]);
    d.invite("retry@fabrikam.test", "Fabrikam");
    wait_for("a 4xx attempt", Duration::from_secs(20), || {
        (outbox_item(&d, "retry@fabrikam.test")["attempts"]
            .as_u64()
            .unwrap_or(0)
            >= 1)
            .then_some(())
    });
    let item = outbox_item(&d, "retry@fabrikam.test");
    assert_eq!(
        item["state"], "queued",
        "a 4xx keeps the message queued: {item}"
    );
    assert!(
        item["last_error"].as_str().unwrap_or("").contains('4'),
        "{item}"
    );
    drop(rejecting);
    let accepting = Sink::start(port, &tmp.path().join("accepted"), &[]);
    wait_for(
        "delivery after the 4xx phase",
        Duration::from_secs(30),
        || (outbox_item(&d, "retry@fabrikam.test")["state"] == "sent").then_some(()),
    );
    let item = outbox_item(&d, "retry@fabrikam.test");
    assert!(
        item["attempts"].as_u64().unwrap_or(0) >= 2,
        "attempts counted: {item}"
    );
    let delivered = accepting.message_ids();
    assert_eq!(
        delivered,
        vec![item["message_id"].as_str().unwrap_or("").to_string()],
        "delivered once, with the Message-ID fixed at queue time"
    );
}

#[test]
fn permanent_failure_makes_the_record_undeliverable_and_notifies_the_provider() {
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let rejecting = Sink::start(port, &tmp.path().join("d"), &["-f", "rcpt"]);
    let d = Daemon::start(smtp_options(port));
    let r = d.invite("nobody@fabrikam.test", "Fabrikam");
    let id = r["id"].as_str().unwrap_or_default().to_string();
    d.wait_state(&id, "undeliverable");
    let last = d.last_transition(&id);
    assert!(
        last["detail"].as_str().unwrap_or("").contains("5"),
        "the server's reply is in the history: {last}"
    );
    let dead = d.json(&["outbox", "--dead"]);
    assert!(
        dead.as_array()
            .is_some_and(|a| a.iter().any(|i| i["to"] == "nobody@fabrikam.test")),
        "{dead}"
    );
    // the provider notice was queued (the sink rejects it too, so it ends on the dead list)
    wait_for("the provider notice", Duration::from_secs(20), || {
        d.json(&["outbox"]).as_array().and_then(|a| {
            a.iter()
                .find(|i| i["to"] == "ops@contoso.test" && i["kind"] == "provider_notice")
                .map(|_| ())
        })
    });
    // ops fix the cause and requeue the dead letter: it goes out with its original Message-ID
    drop(rejecting);
    let accepting = Sink::start(port, &tmp.path().join("accepted"), &[]);
    let item = outbox_item(&d, "nobody@fabrikam.test");
    let retried = d.json(&["outbox", "retry", item["id"].as_str().unwrap_or_default()]);
    assert_eq!(retried["state"], "queued");
    wait_for(
        "the requeued message to be sent",
        Duration::from_secs(20),
        || (outbox_item(&d, "nobody@fabrikam.test")["state"] == "sent").then_some(()),
    );
    let mid = item["message_id"].as_str().unwrap_or_default().to_string();
    assert!(
        accepting.message_ids().contains(&mid),
        "sent with its original Message-ID"
    );
}

#[test]
fn dropped_connections_after_data_resend_the_same_message() {
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = Daemon::start(smtp_options(port));
    let dropping = Sink::start(port, &tmp.path().join("dropped"), &["-q", "."]);
    let emails: Vec<String> = (0..3).map(|i| format!("drop{i}@fabrikam.test")).collect();
    for e in &emails {
        d.invite(e, "Fabrikam");
    }
    wait_for(
        "a dropped attempt for each",
        Duration::from_secs(20),
        || {
            emails
                .iter()
                .all(|e| outbox_item(&d, e)["attempts"].as_u64().unwrap_or(0) >= 1)
                .then_some(())
        },
    );
    drop(dropping);
    let accepting = Sink::start(port, &tmp.path().join("accepted"), &[]);
    wait_for("all sent", Duration::from_secs(40), || {
        emails
            .iter()
            .all(|e| outbox_item(&d, e)["state"] == "sent")
            .then_some(())
    });
    let delivered = accepting.message_ids();
    for e in &emails {
        let item = outbox_item(&d, e);
        let mid = item["message_id"].as_str().unwrap_or("").to_string();
        let copies = delivered.iter().filter(|m| **m == mid).count();
        assert_eq!(copies, 1, "{e}: one copy after the drops, same Message-ID");
    }
}

#[test]
fn a_bulk_send_delivers_each_message_exactly_once() {
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sink = Sink::start(port, &tmp.path().join("bulk"), &[]);
    let mut opts = smtp_options(port);
    opts.outbound = opts
        .outbound
        .map(|o| o.replace("concurrency = 2", "concurrency = 8"));
    let d = Daemon::start(opts);
    let n = 2000;
    let emails: Vec<String> = (0..n).map(|i| format!("b{i}@fabrikam.test")).collect();
    let r = d.invite_csv(&emails);
    assert_eq!(r["queued"], n);
    d.wait_all_sent(Duration::from_secs(120));
    let ids = wait_for(
        "every message in the sink's dump",
        Duration::from_secs(30),
        || {
            let ids = sink.message_ids();
            (ids.len() >= n).then_some(ids)
        },
    );
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), n, "every message arrived");
    assert_eq!(ids.len(), n, "and none twice");
}
