//! Real mail: the daemon sends through Postfix and reads replies from Dovecot, both started on
//! loopback high ports by `scripts/mailstack` under a temporary directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::harness::{wait_for, Daemon, Mail, Options};

pub struct MailStack {
    pub dir: PathBuf,
    pub env: HashMap<String, String>,
}

impl MailStack {
    pub fn start(users: &[String]) -> MailStack {
        MailStack::start_with(users, &[])
    }

    /// `start` with more options for `scripts/mailstack start` (e.g. `--oauth2 URL`).
    pub fn start_with(users: &[String], extra: &[&str]) -> MailStack {
        let dir = tempfile::Builder::new()
            .prefix("ms")
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("{e}"))
            .keep();
        let users_file = dir.join("test-users.txt");
        std::fs::write(&users_file, users.join("\n") + "\n").unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new("scripts/mailstack")
            .arg("start")
            .arg(&dir)
            .arg("--users")
            .arg(&users_file)
            .args(extra)
            .output()
            .unwrap_or_else(|e| panic!("scripts/mailstack: {e}"));
        assert!(
            out.status.success(),
            "mailstack start failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.join("env"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_string(),
                    v.trim().trim_matches(['"', '\'']).to_string(),
                )
            })
            .collect();
        MailStack { dir, env }
    }

    pub fn var(&self, k: &str) -> String {
        self.env
            .get(k)
            .cloned()
            .unwrap_or_else(|| panic!("mailstack env has no {k}"))
    }

    pub fn port(&self, k: &str) -> u16 {
        self.var(k).parse().unwrap_or_else(|e| panic!("{k}: {e}"))
    }

    pub fn password_file(&self) -> PathBuf {
        let p = self.dir.join("password.txt");
        std::fs::write(&p, self.var("PASSWORD")).unwrap_or_else(|e| panic!("{e}"));
        p
    }

    /// Daemon options: SMTP out through Postfix, IMAP in from replies@invited.test.
    pub fn options(&self, idle: bool) -> Options {
        Options {
            outbound: Some(format!(
                "transport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nconcurrency = 4",
                self.port("SMTP_PORT")
            )),
            inbound: Some(format!(
                "source = \"imap\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"tls\"\nca_file = \"{}\"\nusername = \"replies@invited.test\"\npassword_file = \"{}\"\nidle = {idle}\npoll_interval = \"300ms\"",
                self.port("IMAPS_PORT"),
                self.var("CA_CERT"),
                self.password_file().display()
            )),
            ..Options::default()
        }
    }

    /// Every message in a user's mailbox, read over IMAP (plain, loopback).
    /// A current-thread runtime and an IMAP session logged in as `user` (plain, loopback).
    pub fn imap(&self, user: &str) -> (tokio::runtime::Runtime, invited::imap::Session) {
        let cfg = invited::config::ImapConfig {
            host: "127.0.0.1".into(),
            port: self.port("IMAP_PORT"),
            tls: invited::config::Tls::None,
            username: user.into(),
            auth: invited::config::MailAuth::Password {
                password_file: PathBuf::new(),
            },
            mailbox: "INBOX".into(),
            processed_mailbox: "Processed".into(),
            idle: false,
            ca_file: None,
        };
        let rt = runtime();
        let tls = invited::imap::tls_config(None).unwrap_or_else(|e| panic!("{e}"));
        let s = rt
            .block_on(invited::imap::connect(&cfg, &self.var("PASSWORD"), tls))
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        (rt, s)
    }

    /// Every message in a user's mailbox, read over IMAP.
    pub fn read_mailbox(&self, user: &str, mailbox: &str) -> Vec<Vec<u8>> {
        let (rt, mut s) = self.imap(user);
        rt.block_on(async {
            use futures_util::StreamExt;
            let mbox = s.select(mailbox).await.unwrap_or_else(|e| panic!("{e}"));
            let mut out = Vec::new();
            if mbox.exists > 0 {
                let mut f = s
                    .fetch("1:*", "BODY.PEEK[]")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                while let Some(m) = f.next().await {
                    if let Some(b) = m.ok().and_then(|m| m.body().map(<[u8]>::to_vec)) {
                        out.push(b);
                    }
                }
            }
            out
        })
    }

    /// Sends raw message bytes through Postfix.
    pub fn send(&self, from: &str, to: &str, raw: &str) {
        runtime().block_on(async {
            use lettre::AsyncTransport;
            let t = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(
                "127.0.0.1",
            )
            .port(self.port("SMTP_PORT"))
            .build();
            let env = lettre::address::Envelope::new(
                Some(from.parse().unwrap_or_else(|e| panic!("{e}"))),
                vec![to.parse().unwrap_or_else(|e| panic!("{e}"))],
            )
            .unwrap_or_else(|e| panic!("{e}"));
            t.send_raw(&env, raw.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("SMTP to {to}: {e}"));
        });
    }

    pub fn stop(&self) {
        let _ = Command::new("scripts/mailstack")
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

impl Drop for MailStack {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn parse(raw: &[u8]) -> Mail {
    Mail::parse(raw, None)
}

/// Waits until `user`'s INBOX has `n` messages; returns them parsed.
pub fn wait_inbox(ms: &MailStack, user: &str, n: usize) -> Vec<Mail> {
    wait_for(
        &format!("{n} message(s) in {user}'s INBOX"),
        Duration::from_secs(60),
        || {
            let m = ms.read_mailbox(user, "INBOX");
            (m.len() >= n).then(|| m.iter().map(|r| parse(r)).collect())
        },
    )
}

#[test]
fn bulk_invitation_of_500_through_postfix_lands_once_each() {
    let users: Vec<String> = (0..500)
        .map(|i| format!("r{i:03}@d{:02}.test", i % 20))
        .collect();
    let ms = MailStack::start(&users);
    let d = Daemon::start(ms.options(true));
    let r = d.invite_csv(&users);
    assert_eq!(r["queued"], 500, "{}", r["rejected"]);
    d.wait_all_sent(Duration::from_secs(300));
    assert_eq!(
        d.json(&["outbox", "--dead"]).as_array().map(Vec::len),
        Some(0)
    );
    let mut checked = 0;
    for (i, u) in users.iter().enumerate() {
        let mails = wait_inbox(&ms, u, 1);
        assert_eq!(mails.len(), 1, "{u}: exactly one invitation");
        // every link works; checking every tenth keeps the test short, the rest are parsed
        let link = mails[0].link_path();
        if i % 10 == 0 {
            assert_eq!(d.get(&link).status, 200, "{u}: link works");
            checked += 1;
        }
    }
    assert_eq!(checked, 50);
}

pub fn reply_raw(from: &str, to_mail: &Mail, mid: &str, body: &str, dmarc: bool) -> String {
    let ar = if dmarc {
        format!("Authentication-Results: mx.invited.test; dkim=pass; dmarc=pass (p=none) header.from={}\r\n", from.split('@').nth(1).unwrap_or(""))
    } else {
        String::new()
    };
    format!(
        "{ar}From: <{from}>\r\nTo: <{rt}>\r\nSubject: Re: {subj}\r\nMessage-ID: <{mid}>\r\nIn-Reply-To: <{irt}>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n",
        rt = to_mail.reply_to,
        subj = to_mail.subject,
        irt = to_mail.message_id
    )
}

fn replies_move_records(idle: bool) {
    let users: Vec<String> = (0..4).map(|i| format!("c{i}@fabrikam.test")).collect();
    let ms = MailStack::start(&users);
    let d = Daemon::start(ms.options(idle));
    let mut ids = Vec::new();
    for u in &users {
        let r = d.invite(u, "Fabrikam");
        ids.push(r["id"].as_str().unwrap_or_default().to_string());
    }
    for (i, u) in users.iter().enumerate() {
        let m = &wait_inbox(&ms, u, 1)[0];
        ms.send(
            u,
            &m.reply_to,
            &reply_raw(
                u,
                m,
                &format!("reply-{i}-{idle}@fabrikam.test"),
                "DECLINE, thank you",
                false,
            ),
        );
    }
    for id in &ids {
        d.wait_state(id, "declined");
    }
    // handled messages left INBOX for the processed mailbox
    wait_for(
        "INBOX emptied into Processed",
        Duration::from_secs(20),
        || (ms.read_mailbox("replies@invited.test", "Processed").len() >= 4).then_some(()),
    );
}

#[test]
fn replies_are_picked_up_with_idle() {
    replies_move_records(true);
}

#[test]
fn replies_are_picked_up_by_polling() {
    replies_move_records(false);
}

/// APPENDs raw messages to a user's mailbox over IMAP (creating it if needed).
pub fn append(ms: &MailStack, user: &str, mailbox: &str, raws: &[String], recreate: bool) {
    let (rt, mut s) = ms.imap(user);
    rt.block_on(async {
        if recreate {
            let _ = s.delete(mailbox).await;
        }
        let _ = s.create(mailbox).await;
        for raw in raws {
            s.append(mailbox, None, None, raw.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("APPEND: {e}"));
        }
        let _ = s.logout().await;
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn history_len(d: &Daemon, id: &str) -> usize {
    d.json(&["show", id])["history"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
}

#[test]
fn restarts_and_a_recreated_mailbox_apply_nothing_twice_and_skip_nothing() {
    let users: Vec<String> = (0..6).map(|i| format!("u{i}@northwind.test")).collect();
    let ms = MailStack::start(&users);
    let mut opts = ms.options(true);
    // a dedicated mailbox the test can delete and recreate (new UIDVALIDITY)
    opts.inbound = opts.inbound.map(|s| s + "\nmailbox = \"Replies\"");
    let mut d = Daemon::start(opts);
    let mut ids = Vec::new();
    let mut invitations = Vec::new();
    for u in &users {
        let r = d.invite(u, "Northwind");
        ids.push(r["id"].as_str().unwrap_or_default().to_string());
        invitations.push(wait_inbox(&ms, u, 1).remove(0));
    }
    let replies: Vec<String> = users
        .iter()
        .zip(&invitations)
        .enumerate()
        .map(|(i, (u, m))| {
            reply_raw(
                u,
                m,
                &format!("r{i}@northwind.test"),
                "No, thank you",
                false,
            )
        })
        .collect();
    // first batch
    append(&ms, "replies@invited.test", "Replies", &replies[..3], false);
    for id in &ids[..3] {
        d.wait_state(id, "declined");
    }
    // restart between batches; the second batch arrives while the daemon is down
    d.stop();
    append(&ms, "replies@invited.test", "Replies", &replies[3..], false);
    d.spawn();
    for id in &ids[3..] {
        d.wait_state(id, "declined");
    }
    let inbound = d.json(&["inbound"]);
    assert_eq!(
        inbound.as_array().map(Vec::len),
        Some(6),
        "each reply handled once: {inbound}"
    );
    let lens: Vec<usize> = ids.iter().map(|id| history_len(&d, id)).collect();
    // the mailbox is recreated (new UIDVALIDITY) and every old reply restored into it
    d.stop();
    append(&ms, "replies@invited.test", "Replies", &replies, true);
    d.spawn();
    wait_for(
        "the restored replies to be moved out again",
        Duration::from_secs(30),
        || {
            ms.read_mailbox("replies@invited.test", "Replies")
                .is_empty()
                .then_some(())
        },
    );
    assert_eq!(
        d.json(&["inbound"]).as_array().map(Vec::len),
        Some(6),
        "nothing applied twice"
    );
    let after: Vec<usize> = ids.iter().map(|id| history_len(&d, id)).collect();
    assert_eq!(lens, after, "no record changed again");
}

#[test]
fn dovecot_restart_mid_session_reconnects_and_catches_up() {
    let users = vec!["k0@litware.test".to_string(), "k1@litware.test".to_string()];
    let ms = MailStack::start(&users);
    let d = Daemon::start(ms.options(true));
    let r0 = d.invite(&users[0], "Litware");
    let r1 = d.invite(&users[1], "Litware");
    let m0 = wait_inbox(&ms, &users[0], 1).remove(0);
    let m1 = wait_inbox(&ms, &users[1], 1).remove(0);
    ms.send(
        &users[0],
        &m0.reply_to,
        &reply_raw(&users[0], &m0, "k0-reply@litware.test", "DECLINE", false),
    );
    d.wait_state(r0["id"].as_str().unwrap_or_default(), "declined");
    // drop the daemon's IMAP session (Dovecot keeps running client processes across a master
    // stop), stop Dovecot by its master pid, wait until IMAP is gone, then start it again
    let kicked = Command::new("doveadm")
        .arg("-c")
        .arg(ms.var("DOVECOT_CONFIG"))
        .arg("kick")
        .arg("replies@invited.test")
        .output();
    assert!(kicked.is_ok_and(|o| o.status.success()), "doveadm kick");
    let pid = std::fs::read_to_string(ms.var("DOVECOT_PID_FILE"))
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        Command::new("kill")
            .arg("-TERM")
            .arg(&pid)
            .status()
            .is_ok_and(|s| s.success()),
        "kill dovecot {pid}"
    );
    wait_for("Dovecot to stop", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", ms.port("IMAP_PORT")))
            .is_err()
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ms.var("DOVECOT_LOG"))
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Command::new("dovecot")
        .arg("-c")
        .arg(ms.var("DOVECOT_CONFIG"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
        .stderr(log)
        .status()
        .unwrap_or_else(|e| panic!("dovecot: {e}"));
    assert!(started.success(), "dovecot restart");
    ms.send(
        &users[1],
        &m1.reply_to,
        &reply_raw(&users[1], &m1, "k1-reply@litware.test", "DECLINE", false),
    );
    d.wait_state(r1["id"].as_str().unwrap_or_default(), "declined");
    let log = d.log();
    assert!(
        log.contains("IMAP session ended"),
        "the session really broke:\n{log}"
    );
    assert!(
        log.matches("IMAP connected").count() >= 2,
        "and the poller reconnected"
    );
}

#[test]
fn dsn_from_postfix_makes_the_invitation_undeliverable() {
    let ms = MailStack::start(&[]);
    let d = Daemon::start(ms.options(true));
    let r = d.invite("nobody@bounce.test", "Gone Ltd");
    let id = r["id"].as_str().unwrap_or_default().to_string();
    d.wait_state(&id, "undeliverable");
    let last = d.last_transition(&id);
    assert_eq!(last["channel"], "bounce", "{last}");
    let inbound = d.json(&["inbound", "--outcome", "bounce"]);
    assert!(
        inbound
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["record"] == id.as_str())),
        "{inbound}"
    );
    wait_inbox(&ms, "ops@contoso.test", 1);
    // an unknown user of a test domain is refused at RCPT time (550): undeliverable without a DSN
    let r = d.invite("unknown@fabrikam.test", "Fabrikam");
    let id = r["id"].as_str().unwrap_or_default().to_string();
    d.wait_state(&id, "undeliverable");
    let last = d.last_transition(&id);
    assert!(
        last["detail"].as_str().unwrap_or("").contains("550"),
        "{last}"
    );
}

#[test]
fn spoofed_auto_and_unauthenticated_replies_change_nothing() {
    let users = vec![
        "s0@adatum.test".to_string(),
        "other@adatum.test".to_string(),
    ];
    let ms = MailStack::start(&users);
    let d = Daemon::start(ms.options(true));
    let r = d.invite(&users[0], "Adatum");
    let id = r["id"].as_str().unwrap_or_default().to_string();
    let m = wait_inbox(&ms, &users[0], 1).remove(0);
    // spoofed: another From, with DMARC pass for its own domain
    ms.send(
        &users[1],
        &m.reply_to,
        &reply_raw(&users[1], &m, "spoof@adatum.test", "AUTHORIZE", true),
    );
    // out-of-office quoting the invitation
    let ooo = reply_raw(
        &users[0],
        &m,
        "ooo@adatum.test",
        "I am away until Monday.\r\n\r\n> reply AUTHORIZE to accept",
        true,
    )
    .replacen("From:", "Auto-Submitted: auto-replied\r\nFrom:", 1);
    ms.send(&users[0], &m.reply_to, &ooo);
    // the right sender, but no DMARC pass
    ms.send(
        &users[0],
        &m.reply_to,
        &reply_raw(&users[0], &m, "nodmarc@adatum.test", "AUTHORIZE", false),
    );
    for (mid, outcome, why) in [
        ("spoof@adatum.test", "command", "not the record's recipient"),
        ("ooo@adatum.test", "auto_reply", "ignored"),
        ("nodmarc@adatum.test", "command", "dmarc"),
    ] {
        let i = d.wait_inbound(mid);
        assert_eq!(i["outcome"], outcome, "{i}");
        assert!(i["effect"].as_str().unwrap_or("").contains(why), "{i}");
    }
    assert_eq!(d.state(&id), "invited");
    assert_eq!(history_len(&d, &id), 1);
}

#[test]
fn starttls_and_auth_from_a_password_file_on_submission() {
    let ms = MailStack::start(&[]);
    let mut opts = ms.options(true);
    opts.outbound = Some(format!(
        "transport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nca_file = \"{}\"\nusername = \"replies@invited.test\"\npassword_file = \"{}\"",
        ms.port("SUBMISSION_PORT"),
        ms.var("CA_CERT"),
        ms.password_file().display()
    ));
    let d = Daemon::start(opts);
    let out = d.json(&["send-test-email", "ops@contoso.test"]);
    assert_eq!(out["state"], "sent", "{out}");
    let m = wait_inbox(&ms, "ops@contoso.test", 1).remove(0);
    assert_eq!(m.message_id, out["message_id"].as_str().unwrap_or_default());
}

/// Messages in a mailbox, by SELECT alone (no FETCH, so the server's per-session fetch counters
/// stay the daemon's own).
fn count(ms: &MailStack, user: &str, mailbox: &str) -> u32 {
    let (rt, mut s) = ms.imap(user);
    rt.block_on(async {
        let n = s.select(mailbox).await.map(|m| m.exists).unwrap_or(0);
        let _ = s.logout().await;
        n
    })
}

/// Dovecot's logout line for every finished IMAP session of `user` ("Logged out in=… out=…
/// hdr_count=… body_count=… body_bytes=…"), as (field, value) pairs.
fn session_summaries(ms: &MailStack, user: &str) -> Vec<HashMap<String, u64>> {
    std::fs::read_to_string(ms.var("DOVECOT_LOG"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("imap({user})")) && l.contains(" body_count="))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect()
        })
        .collect()
}

#[test]
fn an_oversize_message_is_moved_as_too_large_without_fetching_its_body() {
    let ms = MailStack::start(&[]);
    let mut d = Daemon::start(ms.options(true));
    // over classify::MAX_MESSAGE_BYTES (10 MiB)
    let size = 11 << 20;
    let mut raw = String::from(
        "From: Big Sender <big@fabrikam.test>\r\nTo: replies@invited.test\r\n\
         Subject: Re: a very large answer\r\nMessage-ID: <oversize-imap@fabrikam.test>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nYES\r\n\r\n",
    );
    while raw.len() < size {
        raw.push_str(
            "> a long quoted thread, line after line after line after line after line\r\n",
        );
    }
    append(&ms, "replies@invited.test", "INBOX", &[raw], false);
    let i = d.wait_inbound("oversize-imap@fabrikam.test");
    assert_eq!(i["outcome"], "unrecognised", "{i}");
    assert!(
        i["effect"].as_str().unwrap_or("").contains("too large"),
        "{i}"
    );
    assert_eq!(i["from"], "big@fabrikam.test", "{i}");
    wait_for(
        "the message to move from INBOX to Processed",
        Duration::from_secs(20),
        || {
            (count(&ms, "replies@invited.test", "Processed") == 1
                && count(&ms, "replies@invited.test", "INBOX") == 0)
                .then_some(())
        },
    );
    // The daemon's IMAP session ends with the daemon; Dovecot then logs what it sent to it.
    d.stop();
    let summaries = wait_for(
        "Dovecot's summary of the daemon's session (the one that fetched a header)",
        Duration::from_secs(20),
        || {
            let s = session_summaries(&ms, "replies@invited.test");
            s.iter()
                .any(|s| {
                    s.get("hdr_count").copied().unwrap_or(0) > 0
                        || s.get("body_count").copied().unwrap_or(0) > 0
                })
                .then_some(s)
        },
    );
    println!("Dovecot sessions of replies@invited.test: {summaries:?}");
    for s in &summaries {
        assert_eq!(
            s.get("body_count"),
            Some(&0),
            "no body fetched: {summaries:?}"
        );
        assert!(
            s.get("out").copied().unwrap_or(u64::MAX) < 1 << 20,
            "no session was sent the 11 MiB: {summaries:?}"
        );
    }
}
