//! Issue 10: a bulk CSV in chunks (idempotent, a progress bar only for a person at a terminal),
//! the store bounded by `[store] retention`, and a broken template that waits as a dead letter
//! instead of making recipients undeliverable.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{reply, wait_for, Daemon, Options, BIN};

fn write_csv(d: &Daemon, name: &str, from: usize, n: usize) -> String {
    let path = d.dir.path().join(name);
    let mut text = String::from("email,company,country\n");
    for i in from..from + n {
        text.push_str(&format!("r{i:05}@d{:02}.test,Reseller {i},KR\n", i % 7));
    }
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path.to_string_lossy().into_owned()
}

/// The CLI under a pseudo-terminal (`script` from util-linux): (exit code, what the terminal showed).
fn cli_on_a_terminal(d: &Daemon, args: &str) -> (Option<i32>, String) {
    let cmd = format!("{BIN} --config {} {args}", d.config.display());
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("script: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_bulk_csv_commits_in_chunks_is_idempotent_and_shows_progress_only_on_a_terminal() {
    let d = Daemon::start(Options::default());
    // 2,500 rows: three requests of up to 1,000 rows, each written in store batches of 100
    let first = write_csv(&d, "first.csv", 0, 2500);
    let args = ["invite", "--provider", "contoso-kr", "--csv", &first];
    let (code, out, err) = d.cli_code(&args);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("2500 queued"), "{out}");
    // no terminal: not a trace of the bar
    for text in [&out, &err] {
        assert!(
            !text.contains("rows committed") && !text.contains('\r') && !text.contains('\x1b'),
            "no progress without a terminal: {text:?}"
        );
    }
    assert_eq!(
        d.json(&["list", "invitations"]).as_array().map(Vec::len),
        Some(2500)
    );

    // the same file again: every row is the invitation already made, nothing new is queued
    let again = d.json(&args);
    assert_eq!(again["queued"], 0, "{again}");
    assert_eq!(again["existing"], 2500, "{again}");
    assert_eq!(again["rejected"], 0, "{again}");
    assert_eq!(
        d.json(&["list", "invitations"]).as_array().map(Vec::len),
        Some(2500)
    );
    let rows = again["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2500);
    assert!(rows.iter().all(|r| r["outcome"] == "existing"), "{again}");

    // --json on a terminal: the one JSON document, no bar
    let (code, shown) = cli_on_a_terminal(
        &d,
        &format!("--json invite --provider contoso-kr --csv {first}"),
    );
    assert_eq!(code, Some(0), "{shown}");
    assert!(!shown.contains("rows committed"), "{shown}");
    let v: serde_json::Value = serde_json::from_str(shown.trim())
        .unwrap_or_else(|e| panic!("one JSON document on a terminal with --json: {e}: {shown}"));
    assert_eq!(v["existing"], 2500);

    // a terminal: the bar for the rows, then for the messages going out
    let second = write_csv(&d, "second.csv", 2500, 300);
    let (code, shown) =
        cli_on_a_terminal(&d, &format!("invite --provider contoso-kr --csv {second}"));
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("300/300 rows committed"), "{shown}");
    assert!(shown.contains("messages sent"), "{shown}");
    assert!(shown.contains("300 queued"), "{shown}");
}

#[test]
fn sent_items_references_and_inbound_outcomes_are_pruned_after_the_retention() {
    let d = Daemon::start(Options {
        store_extra: "retention = \"5s\"".into(),
        ..Options::default()
    });
    let (id, mail) = d.invite_one("minji.kim@fabrikam.test", "Fabrikam Korea Ltd.");
    d.wait_all_sent(Duration::from_secs(20));
    let sent = d.json(&["outbox"]);
    assert_eq!(sent.as_array().map(Vec::len), Some(1), "{sent}");
    let message_id = sent[0]["message_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(d.json(&["outbox", "--summary"])["sent_today"], 1);
    // an unrecognised reply: one inbound outcome
    let inbound_id = "prune-1@fabrikam.test";
    d.deliver(
        "prune-1",
        &reply(
            "minji.kim@fabrikam.test",
            &mail,
            inbound_id,
            "Who is this from?",
            "",
        ),
    );
    d.wait_inbound(inbound_id);

    // past the retention: the sent item, its reply reference and the outcome are gone
    wait_for("the store to be pruned", Duration::from_secs(30), || {
        let outbox = d.json(&["outbox"]);
        let inbound = d.json(&["inbound"]);
        (outbox.as_array().is_some_and(Vec::is_empty)
            && inbound.as_array().is_some_and(Vec::is_empty))
        .then_some(())
    });
    assert_eq!(d.json(&["outbox", "--summary"])["sent_today"], 0);
    // the record stays, its history naming the Message-ID of the invitation
    let history = d.json(&["show", &id])["history"].clone();
    assert!(
        history
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["message_ids"]
                .as_array()
                .is_some_and(|m| m.iter().any(|x| x == message_id.as_str()))),
        "{history}"
    );
    // a reply to the pruned message no longer finds it: kept, matched to nothing, no change
    let late = "prune-2@fabrikam.test";
    d.deliver(
        "prune-2",
        &reply("minji.kim@fabrikam.test", &mail, late, "YES", ""),
    );
    let outcome = d.wait_inbound(late);
    assert!(outcome["record"].is_null(), "{outcome}");
    assert!(
        outcome["effect"]
            .as_str()
            .is_some_and(|e| e.contains("no record")),
        "{outcome}"
    );
    assert_eq!(d.state(&id), "invited");
}

#[test]
fn a_broken_template_leaves_its_records_alone_until_fixed_reloaded_and_retried() {
    let d = Daemon::new(Options {
        mail_extra: "templates = \"tpl\"".into(),
        ..Options::default()
    });
    let tpl = d.dir.path().join("tpl").join("en-US");
    std::fs::create_dir_all(&tpl).unwrap_or_else(|e| panic!("{e}"));
    let builtin = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("templates/en-US/provider_invitation.txt.hbs"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // a typo in a variable: loads, but strict mode refuses to render it
    let file = tpl.join("provider_invitation.txt.hbs");
    std::fs::write(&file, format!("{builtin}\n{{{{company_nmae}}}}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut d = d;
    d.spawn();

    let email = "minji.kim@fabrikam.test";
    let id = d.invite(email, "Fabrikam Korea Ltd.")["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let dead = wait_for(
        "the invitation to wait as a dead letter",
        Duration::from_secs(20),
        || {
            let v = d.json(&["outbox", "--dead"]);
            (v.as_array().map(Vec::len) == Some(1)).then_some(v)
        },
    );
    let item = dead[0].clone();
    let error = item["last_error"].as_str().unwrap_or_default();
    assert_eq!(item["kind"], "provider_invitation", "{item}");
    assert!(
        error.contains("provider_invitation")
            && error.contains("company_nmae")
            && error.contains("outbox retry"),
        "the reason names the template and the fix: {error}"
    );
    // the recipient did nothing wrong: the record waits, nobody is told, nothing suppressed
    assert_eq!(d.state(&id), "invited");
    assert!(
        d.mails("ops@contoso.test", None).is_empty(),
        "no provider notice"
    );
    assert!(d
        .json(&["suppress", "list"])
        .as_array()
        .is_some_and(Vec::is_empty));
    assert!(d.mails(email, None).is_empty());

    // other kinds keep sending: an enrollment's verification mail goes out
    let other = "other@fabrikam.test";
    let enroll = d.dir.path().join("enroll.toml");
    std::fs::write(
        &enroll,
        format!(
            "company = \"Other Ltd.\"\ncountry = \"KR\"\nlocale = \"en-US\"\n[address]\nstreet = \"1 Road\"\ncity = \"Seoul\"\npostal_code = \"06236\"\n[primary_contact]\nname = \"Lee\"\nemail = \"{other}\"\nphone = \"+82 2 555 0100\"\n[support]\nemail = \"support@fabrikam.test\"\nphone = \"+82 2 555 0199\"\n[mpn]\nid = \"6543210\"\ncountry = \"KR\"\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    d.json(&["enroll", "--file", &enroll.to_string_lossy()]);
    assert_eq!(d.wait_mails(other, "", 1).len(), 1);

    // fixed, reloaded, retried: it goes out, and the record still waits for its answer
    std::fs::write(&file, builtin).unwrap_or_else(|e| panic!("{e}"));
    d.signal("HUP");
    wait_for("the reload", Duration::from_secs(10), || {
        d.log().contains("templates reloaded").then_some(())
    });
    let item_id = item["id"].as_str().unwrap_or_default();
    d.json(&["outbox", "retry", item_id]);
    let sent = d.wait_mails(email, "", 1);
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].link_path().is_empty());
    assert_eq!(d.state(&id), "invited");
    assert!(d
        .json(&["outbox", "--dead"])
        .as_array()
        .is_some_and(Vec::is_empty));
}
