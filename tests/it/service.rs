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
    assert!(
        !d.dir.path().join("keys").exists(),
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
