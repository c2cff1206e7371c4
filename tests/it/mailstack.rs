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
        let dir = tempfile::Builder::new()
            .prefix("ms")
            .tempdir_in("/tmp")
            .unwrap_or_else(|e| panic!("{e}"))
            .keep();
        let users_file = dir.join("users.txt");
        std::fs::write(&users_file, users.join("\n") + "\n").unwrap_or_else(|e| panic!("{e}"));
        let out = Command::new("scripts/mailstack")
            .arg("start")
            .arg(&dir)
            .arg("--users")
            .arg(&users_file)
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
    pub fn read_mailbox(&self, user: &str, mailbox: &str) -> Vec<Vec<u8>> {
        let cfg = invited::config::ImapConfig {
            host: "127.0.0.1".into(),
            port: self.port("IMAP_PORT"),
            tls: invited::config::Tls::None,
            username: user.into(),
            password_file: PathBuf::new(),
            mailbox: mailbox.into(),
            processed_mailbox: "Processed".into(),
            idle: false,
            ca_file: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            use futures_util::StreamExt;
            let tls = invited::imap::tls_config(None).unwrap_or_else(|e| panic!("{e}"));
            let mut s = invited::imap::connect(&cfg, &self.var("PASSWORD"), tls)
                .await
                .unwrap_or_else(|e| panic!("{user}: {e}"));
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
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
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
    let csv = d.dir.path().join("bulk.csv");
    let mut text = String::from("email,company,country\n");
    for u in &users {
        text.push_str(&format!("{u},Reseller {u},KR\n"));
    }
    std::fs::write(&csv, text).unwrap_or_else(|e| panic!("{e}"));
    let r = d.json(&[
        "invite",
        "--provider",
        "contoso-kr",
        "--csv",
        csv.to_str().unwrap_or_default(),
    ]);
    assert_eq!(r["queued"], 500, "{}", r["rejected"]);
    wait_for("the outbox to drain", Duration::from_secs(300), || {
        let o = d.json(&["outbox"]);
        o.as_array()
            .is_some_and(|a| a.iter().all(|i| i["state"] == "sent"))
            .then_some(())
    });
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

fn reply_raw(from: &str, to_mail: &Mail, mid: &str, body: &str, dmarc: bool) -> String {
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
        let r = d.json(&[
            "invite",
            "--provider",
            "contoso-kr",
            "--email",
            u,
            "--company",
            "Fabrikam",
            "--country",
            "KR",
        ]);
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
