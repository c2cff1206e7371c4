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
