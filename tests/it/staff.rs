//! Staff accounts of the console through the CLI: Argon2id hashes, passwords only from stdin or
//! a terminal, never shown; removal and a new password end the member's sessions.

use crate::harness::{Daemon, Options};

const PW: &str = "a long enough passphrase\n";

#[test]
fn staff_add_list_reset_remove() {
    let d = Daemon::start(Options::default());
    let add = |email: &str, role: &str, pw: &str| {
        d.cli_stdin(
            &["staff", "add", email, "--role", role, "--password-stdin"],
            pw,
        )
    };
    let (code, out, err) = add("Lead@Contoso.test", "admin", PW);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("lead@contoso.test (admin): added"), "{out}");
    let (code, out, err) = add("viewer@contoso.test", "viewer", PW);
    assert_eq!(code, Some(0), "{out}{err}");

    // the rules, each named
    let (code, _, err) = add("short@contoso.test", "viewer", "short\n");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("password") && err.contains("too short"),
        "{err}"
    );
    let (code, _, err) = add("lead@contoso.test", "viewer", PW);
    assert_eq!(code, Some(1));
    assert!(err.contains("already a staff account"), "{err}");
    let (code, _, err) = add("x@contoso.test", "root", PW);
    assert_ne!(code, Some(0));
    assert!(err.contains("root"), "{err}");
    // without --password-stdin and without a terminal: a clear refusal, nothing added
    let (code, _, err) = d.cli_stdin(
        &["staff", "add", "tty@contoso.test", "--role", "viewer"],
        PW,
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("--password-stdin"), "{err}");

    let list = d.json(&["staff", "list"]);
    let rows = list.as_array().cloned().unwrap_or_default();
    let emails: Vec<&str> = rows.iter().filter_map(|r| r["email"].as_str()).collect();
    assert_eq!(emails, ["lead@contoso.test", "viewer@contoso.test"]);
    assert_eq!(rows[0]["role"], "admin");
    let text = list.to_string();
    assert!(
        !text.contains("argon2") && !text.contains("passphrase"),
        "{text}"
    );
    let (_, out, _) = d.cli(&["staff", "list"]);
    assert!(out.contains("2 staff account(s)"), "{out}");

    let before = rows[1]["password_changed_at"].clone();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (code, out, err) = d.cli_stdin(
        &[
            "staff",
            "reset-password",
            "viewer@contoso.test",
            "--password-stdin",
        ],
        "another long passphrase\n",
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let after = d.json(&["staff", "list"])[1]["password_changed_at"].clone();
    assert_ne!(before, after);

    let (code, out, err) = d.cli_code(&["staff", "remove", "viewer@contoso.test"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, err) = d.cli_code(&["staff", "remove", "viewer@contoso.test"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no staff account"), "{err}");
    assert_eq!(d.json(&["staff", "list"]).as_array().map(Vec::len), Some(1));

    // no password (or hash) in the daemon's log
    let log = d.log();
    assert!(
        !log.contains("passphrase") && !log.contains("$argon2"),
        "{log}"
    );
}
