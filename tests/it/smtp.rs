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

// ---- our SMTP client against scripted servers and smtp-sink -----------------------------------

use crate::smtp_script::{Script, Scripted};
use invited::sender::{SendError, SmtpPool};

fn pool(port: u16, concurrency: usize, auth: Option<&Path>) -> SmtpPool {
    let cfg = invited::config::SmtpConfig {
        host: "127.0.0.1".into(),
        port,
        tls: invited::config::Tls::None,
        username: auth.map(|_| "partners@invited.test".to_string()),
        password_file: auth.map(Path::to_path_buf),
        ca_file: None,
        oauth2: None,
    };
    SmtpPool::new(&cfg, concurrency).unwrap_or_else(|e| panic!("{e}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn message(n: usize, body: &str) -> Vec<u8> {
    format!(
        "From: partners@invited.test\r\nTo: r{n}@fabrikam.test\r\nSubject: test {n}\r\nMessage-ID: <m{n}@invited.test>\r\n\r\n{body}"
    )
    .into_bytes()
}

fn envelope(to: &str) -> lettre::address::Envelope {
    lettre::address::Envelope::new(
        Some(
            "replies+x@invited.test"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        ),
        vec![to.parse().unwrap_or_else(|e| panic!("{e}"))],
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Sends all at once (so they queue on the pool's connections together); results in order.
async fn send_all(pool: &SmtpPool, msgs: &[(String, Vec<u8>)]) -> Vec<Result<(), SendError>> {
    let envs: Vec<_> = msgs.iter().map(|(to, _)| envelope(to)).collect();
    futures_util::future::join_all(
        msgs.iter()
            .zip(&envs)
            .map(|((_, bytes), env)| pool.send(env, bytes)),
    )
    .await
}

fn three() -> Vec<(String, Vec<u8>)> {
    (0..3)
        .map(|i| (format!("r{i}@fabrikam.test"), message(i, "hello\r\n")))
        .collect()
}

#[test]
fn with_pipelining_mail_rcpt_and_data_go_together_and_the_next_goes_behind_the_body() {
    // the greeting waits, so all three messages are queued on the one connection first
    let server = Scripted::start(Script {
        greeting_delay: Duration::from_millis(300),
        ..Script::default()
    });
    let pool = pool(server.port, 1, None);
    let results = runtime().block_on(send_all(&pool, &three()));
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let log = server.log();
    assert_eq!(log.connections, 1);
    assert_eq!(log.data.len(), 3, "{log:?}");
    assert_eq!(
        log.mail_groups_whole,
        vec![true; 3],
        "each MAIL came with its RCPT and DATA before any reply: {log:?}"
    );
    assert_eq!(
        log.mail_behind_body[..2],
        [true, true],
        "the next MAIL came behind the body, before its reply: {log:?}"
    );
}

#[test]
fn without_pipelining_every_command_waits_for_its_reply() {
    let server = Scripted::start(Script {
        pipelining: false,
        greeting_delay: Duration::from_millis(300),
        ..Script::default()
    });
    let pool = pool(server.port, 1, None);
    let results = runtime().block_on(send_all(&pool, &three()));
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let log = server.log();
    assert_eq!(log.data.len(), 3, "{log:?}");
    assert_eq!(
        log.commands
            .iter()
            .filter(|c| c.starts_with("MAIL"))
            .count(),
        3
    );
    assert!(
        log.out_of_turn.is_empty(),
        "nothing sent before the reply to the command before it: {:?}",
        log.out_of_turn
    );
}

#[test]
fn a_refused_rcpt_answered_354_gets_a_lone_dot_and_the_message_is_refused() {
    // RFC 2920 §3.1: the server accepts DATA although it refused the only RCPT
    let server = Scripted::start(Script {
        rcpt: |addr| {
            if addr.starts_with("nobody") {
                "550 5.1.1 <nobody@fabrikam.test>: Recipient address rejected: User unknown"
            } else {
                "250 2.1.5 Ok"
            }
        },
        ..Script::default()
    });
    let pool = pool(server.port, 1, None);
    let rt = runtime();
    let refused = rt.block_on(send_all(
        &pool,
        &[("nobody@fabrikam.test".into(), message(1, "secret\r\n"))],
    ));
    let log = server.log();
    assert_eq!(
        log.data,
        vec![b".\r\n".to_vec()],
        "only the end of data was sent, no message: {log:?}"
    );
    match &refused[0] {
        Err(SendError::Permanent(e)) => {
            assert!(e.contains("RCPT TO"), "{e}");
            assert!(
                e.contains(
                    "550 5.1.1 <nobody@fabrikam.test>: Recipient address rejected: User unknown"
                ),
                "the RCPT's reply, in the server's words: {e}"
            );
        }
        other => panic!("a permanent refusal expected: {other:?}"),
    }
    // the session was reset and the connection serves the next message
    let next = rt.block_on(send_all(
        &pool,
        &[("ok@fabrikam.test".into(), message(2, "hello\r\n"))],
    ));
    assert!(next[0].is_ok(), "{next:?}");
    let log = server.log();
    assert_eq!(log.connections, 1, "{log:?}");
    assert!(log.commands.iter().any(|c| c == "RSET"), "{log:?}");
    assert_eq!(log.data.len(), 2);
    assert!(String::from_utf8_lossy(&log.data[1]).contains("hello"));
}

#[test]
fn a_421_slows_down_and_the_connection_is_not_reused() {
    let server = Scripted::start(Script {
        mail: "421 4.3.2 Service shutting down",
        ..Script::default()
    });
    let pool = pool(server.port, 1, None);
    let rt = runtime();
    for _ in 0..2 {
        let r = rt.block_on(send_all(
            &pool,
            &[("r@fabrikam.test".into(), message(1, "x\r\n"))],
        ));
        match &r[0] {
            // not the message's fault, and not a broken transport: the server asks us to wait
            Err(SendError::Throttled(e)) => assert!(e.contains("421 4.3.2"), "{e}"),
            other => panic!("a throttle expected: {other:?}"),
        }
    }
    assert_eq!(
        server.log().connections,
        2,
        "a new connection after the 421"
    );
    assert!(server.log().data.is_empty());
}

#[test]
fn a_4_7_x_too_many_is_a_throttle_and_other_4xx_are_not() {
    let server = Scripted::start(Script {
        rcpt: |to| {
            if to.starts_with("busy") {
                "450 4.7.1 Too many messages from this sender, slow down"
            } else if to.starts_with("full") {
                "452 4.2.2 Mailbox full"
            } else {
                "250 2.1.5 Ok"
            }
        },
        ..Script::default()
    });
    let pool = pool(server.port, 1, None);
    let rt = runtime();
    let r = rt.block_on(send_all(
        &pool,
        &[
            ("busy@fabrikam.test".into(), message(1, "x\r\n")),
            ("full@fabrikam.test".into(), message(2, "x\r\n")),
            ("ok@fabrikam.test".into(), message(3, "x\r\n")),
        ],
    ));
    assert!(
        matches!(&r[0], Err(SendError::Throttled(e)) if e.contains("4.7.1")),
        "{:?}",
        r[0]
    );
    assert!(matches!(&r[1], Err(SendError::Transient(_))), "{:?}", r[1]);
    assert!(r[2].is_ok(), "{:?}", r[2]);
}

#[test]
fn a_refused_login_is_the_transport_and_the_pool_holds_off() {
    let server = Scripted::start(Script {
        auth: Some("535 5.7.8 Error: authentication failed: authentication failure"),
        ..Script::default()
    });
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pw = tmp.path().join("password");
    std::fs::write(&pw, "wrong\n").unwrap_or_else(|e| panic!("{e}"));
    let pool = pool(server.port, 2, Some(&pw));
    let rt = runtime();
    let first = rt.block_on(send_all(
        &pool,
        &[("r@fabrikam.test".into(), message(1, "x\r\n"))],
    ));
    match &first[0] {
        Err(SendError::Transport(e)) => {
            assert!(e.contains("AUTH"), "{e}");
            assert!(
                e.contains("535 5.7.8 Error: authentication failed: authentication failure"),
                "the server's words are kept: {e}"
            );
        }
        other => panic!("a transport error expected: {other:?}"),
    }
    let log = server.log();
    let auth = log
        .commands
        .iter()
        .find(|c| c.starts_with("AUTH PLAIN "))
        .unwrap_or_else(|| panic!("no AUTH PLAIN: {log:?}"));
    let decoded = data_encoding::BASE64
        .decode(&auth.as_bytes()["AUTH PLAIN ".len()..])
        .unwrap_or_default();
    assert_eq!(decoded, b"\0partners@invited.test\0wrong");
    // right after, the pool does not try again: the same cause, no new connection
    let second = rt.block_on(send_all(
        &pool,
        &[("r@fabrikam.test".into(), message(2, "x\r\n"))],
    ));
    match &second[0] {
        Err(SendError::Transport(e)) => assert!(e.contains("535 5.7.8"), "{e}"),
        other => panic!("a transport error expected: {other:?}"),
    }
    assert_eq!(server.log().connections, 1);
    assert!(server.log().data.is_empty());
}

#[test]
fn a_pooled_connection_the_server_closed_is_replaced_without_failing_the_message() {
    let server = Scripted::start(Script {
        close_after: Some(1),
        ..Script::default()
    });
    let pool = pool(server.port, 1, None);
    let rt = runtime();
    let first = rt.block_on(send_all(
        &pool,
        &[("r1@fabrikam.test".into(), message(1, "one\r\n"))],
    ));
    assert!(first[0].is_ok(), "{first:?}");
    wait_for(
        "the server to close the idle connection",
        Duration::from_secs(10),
        || (server.log().closed == 1).then_some(()),
    );
    let second = rt.block_on(send_all(
        &pool,
        &[("r2@fabrikam.test".into(), message(2, "two\r\n"))],
    ));
    assert!(second[0].is_ok(), "sent on a new connection: {second:?}");
    let log = server.log();
    assert_eq!(log.connections, 2, "{log:?}");
    assert_eq!(log.data.len(), 2, "{log:?}");
}

#[test]
fn the_pool_says_quit_when_closed() {
    let server = Scripted::start(Script::default());
    let pool = pool(server.port, 1, None);
    let rt = runtime();
    let r = rt.block_on(send_all(
        &pool,
        &[("r@fabrikam.test".into(), message(1, "x\r\n"))],
    ));
    assert!(r[0].is_ok(), "{r:?}");
    rt.block_on(pool.close());
    wait_for("QUIT", Duration::from_secs(5), || {
        (server.log().commands.last().map(String::as_str) == Some("QUIT")).then_some(())
    });
}

/// The message body of a smtp-sink dump: after the header block (the dump has LF line ends).
fn dumped_bodies(dump: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dump).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        if let Some((_, body)) = text.split_once("\n\n") {
            out.push(body.to_string());
        }
    }
    out
}

#[test]
fn lines_starting_with_a_dot_arrive_intact_with_and_without_pipelining() {
    let body_lines = [
        "first",
        ".",
        "..",
        ".leading dot",
        "...three",
        "middle.dot",
        "",
        ".",
        "last",
    ];
    let body = body_lines.join("\r\n") + "\r\n";
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (name, faults) in [("pipelined", &[][..]), ("plain", &["-p"][..])] {
        let port = free_port();
        let sink = Sink::start(port, &tmp.path().join(name), faults);
        let pool = pool(port, 1, None);
        let r = runtime().block_on(send_all(
            &pool,
            &[("r@fabrikam.test".into(), message(1, &body))],
        ));
        assert!(r[0].is_ok(), "{name}: {r:?}");
        let bodies = wait_for("the dump", Duration::from_secs(10), || {
            let b = dumped_bodies(&sink.dump);
            (!b.is_empty()).then_some(b)
        });
        // smtp-sink undoes the dot-stuffing and appends an empty line
        assert_eq!(
            bodies,
            vec![body_lines.join("\n") + "\n\n"],
            "{name}: the body as sent"
        );
    }
}

#[test]
fn a_refused_login_keeps_the_message_queued_and_the_record_deliverable() {
    let server = Scripted::start(Script {
        auth: Some("535 5.7.8 Error: authentication failed: authentication failure"),
        ..Script::default()
    });
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pw = tmp.path().join("password");
    std::fs::write(&pw, "wrong\n").unwrap_or_else(|e| panic!("{e}"));
    let mut opts = smtp_options(server.port);
    opts.outbound = opts.outbound.map(|o| {
        format!(
            "{o}\nusername = \"partners@invited.test\"\npassword_file = \"{}\"",
            pw.display()
        )
    });
    // past max_age after the first attempt: a transport failure still keeps it queued
    opts.max_age = "1s";
    let d = Daemon::start(opts);
    let r = d.invite("auth@fabrikam.test", "Fabrikam");
    let id = r["id"].as_str().unwrap_or_default().to_string();
    let state_before = d.state(&id);
    wait_for(
        "two refused attempts, or the message given up",
        Duration::from_secs(30),
        || {
            let item = outbox_item(&d, "auth@fabrikam.test");
            (item["attempts"].as_u64().unwrap_or(0) >= 2 || item["state"] != "queued").then_some(())
        },
    );
    let item = outbox_item(&d, "auth@fabrikam.test");
    assert_eq!(item["state"], "queued", "{item}");
    assert!(
        item["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("535 5.7.8"),
        "the server's words: {item}"
    );
    assert_eq!(
        d.state(&id),
        state_before,
        "the record is not undeliverable"
    );
    assert_ne!(d.state(&id), "undeliverable");
    let outbox = d.json(&["outbox"]);
    assert!(
        !outbox
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["kind"] == "provider_notice")),
        "no provider notice: {outbox}"
    );
    assert!(
        d.log()
            .contains("the SMTP transport failed, not this message"),
        "the log says why it stays queued"
    );
    assert!(server.log().data.is_empty(), "nothing was sent");
}

#[test]
fn a_connection_is_recycled_after_max_messages_per_connection() {
    let server = Scripted::start(Script::default());
    let pool = pool(server.port, 1, None).with_max_messages_per_connection(3);
    let rt = runtime();
    let msgs: Vec<(String, Vec<u8>)> = (0..7)
        .map(|i| (format!("r{i}@fabrikam.test"), message(i, "x\r\n")))
        .collect();
    let results = rt.block_on(send_all(&pool, &msgs));
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let log = server.log();
    assert_eq!(log.data.len(), 7, "{log:?}");
    // 3 + 3 + 1 transactions: three connections, each of the first two ended with QUIT
    assert_eq!(log.connections, 3, "{log:?}");
    let mails_per_session: Vec<usize> = log
        .commands
        .split(|c| c == "QUIT")
        .map(|s| s.iter().filter(|c| c.starts_with("MAIL FROM")).count())
        .filter(|n| *n > 0)
        .collect();
    assert!(
        mails_per_session.iter().all(|n| *n <= 3),
        "{mails_per_session:?}"
    );
}

/// `invited_<name> N` from the metrics text.
fn metric(d: &Daemon, name: &str) -> u64 {
    let m = d
        .metrics
        .clone()
        .unwrap_or_else(|| panic!("metrics_listen"));
    let body = crate::harness::http(&m, "GET", "/metrics", None).body;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("invited_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no invited_{name} in {body}"))
}

#[test]
fn a_421_slows_the_sender_down_and_loses_nothing() {
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut o = smtp_options(port);
    o.http_extra = "metrics_listen = \"127.0.0.1:0\"".into();
    let d = Daemon::start(o);
    // "421 ... Service unavailable" and a hang-up after every MAIL FROM
    let busy = Sink::start(port, &tmp.path().join("busy"), &["-Q", "mail"]);
    let emails: Vec<String> = (0..30).map(|i| format!("busy{i}@fabrikam.test")).collect();
    assert_eq!(d.invite_csv(&emails)["queued"], 30);
    wait_for("the slow-down in the log", Duration::from_secs(20), || {
        d.log()
            .contains("the server asks us to slow down")
            .then_some(())
    });
    // let the busy server answer for a while
    std::thread::sleep(Duration::from_secs(6));
    let throttled = metric(&d, "throttled_total");
    let items = d.json(&["outbox"]);
    let items = items.as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 30);
    for i in &items {
        assert_eq!(i["state"], "queued", "{i}");
        assert_eq!(i["attempts"], 0, "a 421 uses up no retry: {i}");
    }
    assert!(
        items.iter().any(|i| i["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("throttled:") && e.contains("421"))),
        "{items:?}"
    );
    assert_eq!(metric(&d, "retried_total"), 0);
    // Without slowing down, each of the 30 messages would have been offered at least once (and
    // again after its backoff) in that time; paused and spaced, far fewer tries reach the server.
    eprintln!("# 421 phase: {throttled} tries answered 421 while 30 messages waited");
    assert!(throttled >= 1, "the 421s were seen");
    assert!(
        throttled < 30,
        "{throttled} tries answered 421 while 30 messages waited: the sender did not slow down"
    );
    let log = d.log();
    let strikes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the server asks us to slow down"))
        .collect();
    assert!(
        strikes.iter().all(|l| l.contains("421")),
        "the server's answer is logged: {strikes:?}"
    );

    // the server takes mail again: everything goes out, once
    drop(busy);
    let ok = Sink::start(port, &tmp.path().join("ok"), &[]);
    wait_for("all 30 delivered", Duration::from_secs(120), || {
        (ok.message_ids().len() >= 30).then_some(())
    });
    d.wait_all_sent(Duration::from_secs(30));
    let mut ids = ok.message_ids();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30, "each message once");
    for i in d.json(&["outbox"]).as_array().cloned().unwrap_or_default() {
        assert_eq!(i["attempts"], 1, "{i}");
    }
}
