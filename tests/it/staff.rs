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

/// Sessions end when idle longer than `[console] session_idle`, and idle ones are removed when
/// someone signs in (in-process, on the suite's store backend).
#[test]
fn sessions_expire_when_idle() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let text = crate::harness::config_text(&Options::default());
    let path = dir.path().join("invited.toml");
    std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    crate::harness::give_key(dir.path());
    let cfg = invited::config::Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let shared = invited::daemon::load_shared(cfg.clone()).unwrap_or_else(|e| panic!("{e}"));
    let store = invited::store::Store::open(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let app = invited::app::App::new(store, shared);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        app.staff_add("lead@contoso.test", "admin", PW.trim())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let member = app
            .staff_check_password("lead@contoso.test", PW.trim())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("the right password"));
        assert!(app
            .staff_check_password("lead@contoso.test", "a wrong passphrase")
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
        assert!(app
            .staff_check_password("nobody@contoso.test", PW.trim())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
        let hour = chrono::Duration::hours(1);
        let a = app
            .console_session_start(&member, hour)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let b = app
            .console_session_start(&member, hour)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let who = app
            .console_session(&a, hour)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            who.map(|w| w.email.to_string()),
            Some("lead@contoso.test".into())
        );
        assert!(app
            .console_session("not a session", hour)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
        std::thread::sleep(std::time::Duration::from_millis(30));
        // idle longer than allowed: gone, and stays gone
        let idle = chrono::Duration::milliseconds(10);
        assert!(app
            .console_session(&a, idle)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
        assert!(app
            .console_session(&a, hour)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
        // b was idle too: a new sign-in with that limit removes it
        let _c = app
            .console_session_start(&member, idle)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(app
            .console_session(&b, hour)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
    });
}
