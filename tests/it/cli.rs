//! The command line as a newcomer meets it: ids checked before the daemon is asked, exit codes
//! a script can act on, CSV line numbers as the file shows them.

use crate::harness::{Daemon, Options};

#[test]
fn ids_in_the_wrong_shape_are_named_before_the_daemon_is_asked() {
    let d = Daemon::start(Options::default());
    for args in [
        vec!["review", "approve", "<enrollment-id>"],
        vec!["review", "reject", "<enrollment-id>", "--reason", "x"],
        vec!["show", "123"],
        vec!["resend", "../../v1/outbox"],
        vec!["revoke", "abc?def"],
        vec!["remove-admin-access", "<id>"],
        vec!["outbox", "retry", "nope"],
    ] {
        let (code, out, err) = d.cli_code(&args);
        assert_eq!(code, Some(1), "{args:?}: {out}{err}");
        assert!(
            err.contains("is not an id") && !err.contains("uri"),
            "{args:?}: {err}"
        );
    }
    // a well-shaped id that names nothing is the daemon's answer, not the CLI's
    let (code, _, err) = d.cli_code(&["show", "aaaaaaaaaaaaaaaaaaaaaaaaaa"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("not found") || err.contains("no record"),
        "{err}"
    );
}

#[test]
fn bulk_exit_codes_existing_rows_and_crlf_line_numbers() {
    let d = Daemon::start(Options::default());
    // CRLF as Excel writes it; lines 3 and 5 are web-mail addresses
    let csv = d.dir.path().join("crlf.csv");
    std::fs::write(
        &csv,
        "email,company,country\r\nok1@fabrikam.test,Fabrikam,KR\r\nbad1@gmail.com,Web,KR\r\n\
         \"ok2@fabrikam.test\",\"Fabrikam\r\nKorea\",KR\r\nbad2@gmail.com,Web,KR\r\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let path = csv.to_str().unwrap_or_default();
    let args = ["invite", "--provider", "contoso-kr", "--csv", path];
    let (code, out, err) = d.cli_code(&args);
    assert_eq!(code, Some(3), "some rows rejected: {out}{err}");
    assert!(out.contains("line 3: bad1@gmail.com"), "{out}");
    assert!(out.contains("line 4: ok2@fabrikam.test: company"), "{out}");
    assert!(
        out.contains("line 6: bad2@gmail.com"),
        "a quoted line break counts: {out}"
    );
    let mut json = vec!["--json"];
    json.extend_from_slice(&args);
    let (code, out, _) = d.cli_code(&json);
    assert_eq!(code, Some(3));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let lines: Vec<(u64, &str)> = v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["line"].as_u64().unwrap_or(0),
                r["outcome"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (2, "existing"),
            (3, "rejected"),
            (4, "rejected"),
            (6, "rejected")
        ]
    );

    // only good rows: exit 0, and a re-run names the existing invitations
    let good = d.dir.path().join("good.csv");
    std::fs::write(
        &good,
        "email,company,country\nok1@fabrikam.test,Fabrikam,KR\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let gpath = good.to_str().unwrap_or_default();
    let (code, out, err) = d.cli_code(&["invite", "--provider", "contoso-kr", "--csv", gpath]);
    assert_eq!(code, Some(0), "{out}{err}");
    let id = d.json(&["list", "invitations"])[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        out.contains(&format!(
            "line 2: ok1@fabrikam.test: already invited ({id})"
        )),
        "{out}"
    );
}

#[test]
fn an_unknown_provider_is_an_error_in_lists_too() {
    let d = Daemon::start(Options::default());
    for args in [
        vec!["list", "resellers", "--provider", "nope"],
        vec!["list", "invitations", "--provider", "nope"],
        vec!["list", "customers", "--provider", "nope"],
    ] {
        let (code, out, err) = d.cli_code(&args);
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(
            err.contains("unknown provider") && err.contains("contoso-kr"),
            "{err}"
        );
    }
    let (code, out, _) = d.cli_code(&["list", "resellers", "--provider", "contoso-kr"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("0 record(s)"), "{out}");
}
