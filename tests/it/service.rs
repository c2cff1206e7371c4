//! The daemon as a system service: secrets from systemd credentials, logs without secrets.

use crate::harness::Daemon;
use crate::mailstack::{wait_inbox, MailStack};

#[test]
fn secrets_come_from_the_credentials_directory() {
    let ms = MailStack::start(&["minji.kim@fabrikam.test".to_string()]);
    let mut opts = ms.options(true);
    opts.outbound = Some(format!(
        "transport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nca_file = \"{}\"\nusername = \"replies@invited.test\"\npassword_file = \"credential:smtp-password\"",
        ms.port("SUBMISSION_PORT"),
        ms.var("CA_CERT"),
    ));
    opts.inbound = opts.inbound.map(|i| {
        let line = i
            .lines()
            .find(|l| l.starts_with("password_file"))
            .unwrap_or_default()
            .to_string();
        i.replace(&line, "password_file = \"credential:imap-password\"")
    });
    let mut d = Daemon::new(opts);
    let text = std::fs::read_to_string(&d.config)
        .unwrap_or_default()
        .replace("k1 = \"keys/k1.key\"", "k1 = \"credential:k1.key\"");
    std::fs::write(&d.config, text).unwrap_or_else(|e| panic!("{e}"));
    let creds = d.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap_or_else(|e| panic!("{e}"));
    let password = ms.var("PASSWORD");
    for (name, value) in [
        ("smtp-password", password.as_str()),
        ("imap-password", password.as_str()),
        (
            "k1.key",
            "7f3a9c2e5b8d1f4a6c0e9b2d5f8a1c4e7b0d3f6a9c2e5b8d1f4a7c0e3b6d9f2a",
        ),
    ] {
        std::fs::write(creds.join(name), value).unwrap_or_else(|e| panic!("{e}"));
    }

    // without $CREDENTIALS_DIRECTORY: check-config names the key; client commands don't care
    let (ok, _, err) = d.cli(&["check-config"]);
    assert!(
        !ok && err.contains("keys.files.k1") && err.contains("CREDENTIALS_DIRECTORY"),
        "{err}"
    );

    d.env = vec![(
        "CREDENTIALS_DIRECTORY".into(),
        creds.to_string_lossy().into_owned(),
    )];
    d.spawn();
    let out = d.json(&["send-test-email", "ops@contoso.test"]);
    assert_eq!(out["state"], "sent", "SMTP AUTH with the credential: {out}");
    let m = wait_inbox(&ms, "ops@contoso.test", 1).remove(0);
    assert_eq!(m.message_id, out["message_id"].as_str().unwrap_or_default());
    // (on PostgreSQL the harness puts a key file in keys/, as ops must: it is not used here)
    assert!(
        crate::harness::on_postgres() || !d.dir.path().join("keys").exists(),
        "no key generated: the credential is the key"
    );
    // links are signed with the credential key: an invitation's link opens
    d.invite("minji.kim@fabrikam.test", "Fabrikam");
    let inv = wait_inbox(&ms, "minji.kim@fabrikam.test", 1).remove(0);
    assert_eq!(d.get(&inv.link_path()).status, 200);
    // and the IMAP login used the other credential
    assert!(d.log().contains("IMAP connected"), "{}", d.log());
}

/// Every `/t/<token>` link in the file outbox, and each token's MAC part.
fn tokens_in_outbox(d: &Daemon) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d.outbox_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let raw = std::fs::read(e.path()).unwrap_or_default();
        let m = crate::harness::Mail::parse(&raw, None);
        if m.text.contains("/t/") {
            let token = m.link_path().trim_start_matches("/t/").to_string();
            out.extend(
                token
                    .split('.')
                    .filter(|p| p.len() >= 16)
                    .map(str::to_string),
            );
            out.push(token);
        }
    }
    out
}

#[test]
fn a_trace_level_run_logs_no_token_mac_key_or_password() {
    // the whole link flow at trace level, with the file transport
    let mut d = Daemon::new(crate::harness::Options::default());
    d.env = vec![("INVITED_LOG".into(), "trace".into())];
    d.spawn();
    crate::domain::authorized_reseller_with_customers(&d, 1);
    let mut secrets = tokens_in_outbox(&d);
    assert!(secrets.len() >= 10, "links seen: {secrets:?}");
    let key = std::fs::read_to_string(d.dir.path().join("keys/k1.key")).unwrap_or_default();
    secrets.push(key.trim().to_string());
    let log = d.log();
    assert!(
        log.len() > 10_000,
        "trace logging was on: {} bytes",
        log.len()
    );
    for s in &secrets {
        assert!(!log.contains(s.as_str()), "the log holds a secret: {s}");
    }

    // SMTP AUTH and IMAP LOGIN with a password, at trace level
    let ms = MailStack::start(&[]);
    let mut opts = ms.options(true);
    opts.outbound = Some(format!(
        "transport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nca_file = \"{}\"\nusername = \"replies@invited.test\"\npassword_file = \"{}\"",
        ms.port("SUBMISSION_PORT"),
        ms.var("CA_CERT"),
        ms.password_file().display()
    ));
    let mut m = Daemon::new(opts);
    m.env = vec![("INVITED_LOG".into(), "trace".into())];
    m.spawn();
    assert_eq!(
        m.json(&["send-test-email", "ops@contoso.test"])["state"],
        "sent"
    );
    crate::harness::wait_for("an IMAP login", std::time::Duration::from_secs(20), || {
        m.log().contains("IMAP connected").then_some(())
    });
    let log = m.log();
    let password = ms.var("PASSWORD");
    assert!(password.len() >= 8);
    use data_encoding::BASE64;
    let plain = BASE64.encode(format!("\0replies@invited.test\0{password}").as_bytes());
    for s in [
        password.as_str(),
        plain.as_str(),
        &BASE64.encode(password.as_bytes()),
    ] {
        assert!(!log.contains(s), "the log holds the password ({s})");
    }
}

/// What the daemon said on NOTIFY_SOCKET, collected by a thread.
struct NotifySocket {
    path: std::path::PathBuf,
    got: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("{e}"));
        sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap_or_else(|e| panic!("{e}"));
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // ends when the test process does; bounded by the test's own waits
            loop {
                if let Ok(n) = sock.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
                }
            }
        });
        NotifySocket { path, got }
    }

    fn messages(&self) -> Vec<String> {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn count(&self, what: &str) -> usize {
        self.messages().iter().filter(|m| m.contains(what)).count()
    }

    fn wait(&self, what: &str, n: usize) {
        crate::harness::wait_for(
            &format!("{n} × {what} on NOTIFY_SOCKET"),
            std::time::Duration::from_secs(20),
            || (self.count(what) >= n).then_some(()),
        );
    }
}

#[test]
fn ready_watchdog_and_reload_over_notify_socket() {
    let mut d = Daemon::new(crate::harness::Options::default());
    let notify = NotifySocket::bind(d.dir.path());
    d.env = vec![
        (
            "NOTIFY_SOCKET".into(),
            notify.path.to_string_lossy().into_owned(),
        ),
        ("WATCHDOG_USEC".into(), "400000".into()),
    ];
    d.spawn();
    notify.wait("READY=1", 1);
    // READY came after the HTTP port was bound: it answers now
    assert_eq!(d.get("/healthz").status, 200);
    let first = notify.messages();
    let ready_at = first.iter().position(|m| m.contains("READY=1"));
    assert!(
        first[ready_at.unwrap_or(0)].contains("STATUS=serving; 0 queued, 0 dead"),
        "{first:?}"
    );
    notify.wait("WATCHDOG=1", 3);

    // SIGHUP with a new provider: usable without a restart
    let cfg = std::fs::read_to_string(&d.config).unwrap_or_default();
    let with_new = format!(
        "{cfg}\n[[providers]]\nid = \"fabrikam-dist\"\nname = \"Fabrikam Distribution\"\nemail = \"ops@fabrikam-dist.test\"\nmarkets = [\"KR\"]\n"
    );
    let (ok, _, _) = d.cli(&[
        "invite",
        "--provider",
        "fabrikam-dist",
        "--email",
        "a@northwind.test",
        "--company",
        "Northwind",
        "--country",
        "KR",
    ]);
    assert!(!ok, "the provider is unknown before the reload");
    std::fs::write(&d.config, &with_new).unwrap_or_else(|e| panic!("{e}"));
    d.signal("HUP");
    notify.wait("RELOADING=1", 1);
    notify.wait("READY=1", 2);
    let v = d.json(&[
        "invite",
        "--provider",
        "fabrikam-dist",
        "--email",
        "a@northwind.test",
        "--company",
        "Northwind",
        "--country",
        "KR",
    ]);
    assert_eq!(v["state"], "invited", "{v}");

    // a broken config is refused, named, and the running one kept
    std::fs::write(&d.config, format!("{with_new}\n[policy2]\nx = 1\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    d.signal("HUP");
    notify.wait("RELOADING=1", 2);
    notify.wait("reload refused", 1);
    crate::harness::wait_for(
        "the refusal in the log",
        std::time::Duration::from_secs(10),
        || d.log().contains("reload refused").then_some(()),
    );
    assert!(
        d.log().contains("policy2"),
        "the log names the key: {}",
        d.log()
    );
    assert_eq!(d.get("/healthz").status, 200);
    // the CLI reads the (broken) file too: ask through a good copy naming the same socket
    let broken = std::mem::replace(&mut d.config, d.dir.path().join("client.toml"));
    std::fs::write(&d.config, &with_new).unwrap_or_else(|e| panic!("{e}"));
    let v = d.json(&[
        "invite",
        "--provider",
        "fabrikam-dist",
        "--email",
        "b@northwind.test",
        "--company",
        "Northwind",
        "--country",
        "KR",
    ]);
    assert_eq!(
        v["state"], "invited",
        "still serving with the running config: {v}"
    );
    d.config = broken;

    // a change that needs a restart is named as such
    std::fs::write(
        &d.config,
        with_new.replace("poll_interval = \"100ms\"", "poll_interval = \"200ms\""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    d.signal("HUP");
    crate::harness::wait_for(
        "the restart note",
        std::time::Duration::from_secs(10),
        || {
            d.log()
                .contains("restart_needed=mail.inbound.poll_interval")
                .then_some(())
        },
    );

    // key rotation: k2 becomes active, k1 still verifies the links already sent
    let (_, old_mail) = d.invite_one("c@northwind.test", "Northwind");
    std::fs::write(d.dir.path().join("keys/k2.key"), "5".repeat(64))
        .unwrap_or_else(|e| panic!("{e}"));
    let rotated = with_new.replace(
        "active = \"k1\"\nfiles = { k1 = \"keys/k1.key\" }",
        "active = \"k2\"\nfiles = { k1 = \"keys/k1.key\", k2 = \"keys/k2.key\" }",
    );
    assert_ne!(rotated, with_new);
    std::fs::write(&d.config, &rotated).unwrap_or_else(|e| panic!("{e}"));
    let readies = notify.count("READY=1");
    d.signal("HUP");
    notify.wait("READY=1", readies + 1);
    let (_, new_mail) = d.invite_one("e@northwind.test", "Northwind");
    assert_eq!(
        d.get(&old_mail.link_path()).status,
        200,
        "a k1 link still opens"
    );
    assert_eq!(d.get(&new_mail.link_path()).status, 200, "a k2 link opens");
    let kid = |link: String| {
        invited::token::Keys::decode(link.trim_start_matches("/t/"))
            .map(|(kid, _, _)| kid)
            .unwrap_or_default()
    };
    assert_eq!(kid(old_mail.link_path()), "k1");
    assert_eq!(
        kid(new_mail.link_path()),
        "k2",
        "new links are signed with the new key"
    );

    let st = d.terminate(std::time::Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    notify.wait("STOPPING=1", 1);
}

#[test]
fn sigterm_mid_send_exits_cleanly_and_loses_nothing() {
    use crate::smtp::{free_port, smtp_options, Sink};
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let sink = Sink::start(port, &tmp.path().join("sink"), &[]);
    let mut opts = smtp_options(port);
    opts.outbound = opts.outbound.map(|o| format!("{o}\nrate_per_second = 500"));
    let mut d = Daemon::start(opts);
    let n = 2000;
    let emails: Vec<String> = (0..n).map(|i| format!("t{i}@fabrikam.test")).collect();
    assert_eq!(d.invite_csv(&emails)["queued"], n);
    crate::harness::wait_for(
        "sending under way",
        std::time::Duration::from_secs(30),
        || (sink.message_ids().len() >= 200).then_some(()),
    );
    let st = d.terminate(std::time::Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "exit 0 within 10 s: {st:?}\n{}",
        d.log()
    );
    let sent_before = sink.message_ids().len();
    assert!(sent_before < n, "stopped mid-run ({sent_before} of {n})");
    d.spawn();
    d.wait_all_sent(std::time::Duration::from_secs(60));
    let ids = crate::harness::wait_for(
        "every message at the sink",
        std::time::Duration::from_secs(30),
        || {
            let ids = sink.message_ids();
            (ids.len() >= n).then_some(ids)
        },
    );
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), n, "none lost");
    // duplicates only from sends in flight at the stop (concurrency 2)
    assert!(ids.len() - n <= 2, "{} duplicates", ids.len() - n);
}
