//! Regression tests for what a hostile client or sender tried (issue 7): action words that
//! skip consent, names that fool a reader or a mail client, escape sequences from senders,
//! formula cells in the export, files other local users could read.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::harness::{enrollment_file, Daemon, Options};

const MINJI: &str = "minji.kim@fabrikam.test";

fn history_len(d: &Daemon, id: &str) -> usize {
    d.json(&["show", id])["history"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0)
}

/// POSTs each form to `link` and checks that none of them changes the record.
fn none_acts(d: &Daemon, link: &str, id: &str, forms: &[&[(&str, &str)]]) {
    let (state, len) = (d.state(id), history_len(d, id));
    for form in forms {
        let r = d.post(link, form);
        assert_ne!(r.status, 500, "{form:?}: {}", r.body);
        assert!(
            !r.body.contains("result-done"),
            "{form:?} must not act: {}",
            r.body
        );
        assert_eq!(d.state(id), state, "{form:?} changed the state");
        assert_eq!(history_len(d, id), len, "{form:?} added history");
    }
}

#[test]
fn each_link_takes_only_its_own_action_words_and_consent() {
    let d = Daemon::start(Options::default());

    // verify_contact: only "confirm" (no consent needed for one's own address)
    let file = enrollment_file(&d, MINJI);
    let enr = d.json(&["enroll", "--file", &file])["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ver = d
        .wait_mails(MINJI, "", 1)
        .pop()
        .unwrap_or_else(|| panic!("verification"));
    let vlink = ver.link_path();
    let on = ("consent", "on");
    none_acts(
        &d,
        &vlink,
        &enr,
        &[
            &[("action", "accept")],
            &[("action", "accept"), on],
            &[("action", "authorize"), on],
            &[("action", "decline")],
            &[("action", "enroll")],
            &[("action", "CONFIRM")],
        ],
    );
    assert_eq!(d.post(&vlink, &[("action", "confirm")]).status, 200);
    assert_eq!(d.state(&enr), "in_review");

    // accept_agreement: only "accept", and only with consent
    d.json(&["review", "approve", &enr]);
    let agreement = d
        .wait_mails(MINJI, "", 3)
        .pop()
        .unwrap_or_else(|| panic!("agreement"));
    let alink = agreement.link_path();
    none_acts(
        &d,
        &alink,
        &enr,
        &[
            &[("action", "confirm")],
            &[("action", "confirm"), on],
            &[("action", "authorize"), on],
            &[("action", "decline")],
            &[("action", "accept")],
            &[("action", "accept"), ("consent", "off")],
        ],
    );
    let acc = d.post(&alink, &[("action", "accept"), on]);
    assert!(acc.body.contains("result-done"), "{}", acc.body);
    assert_eq!(d.state(&enr), "active");

    // authorize_provider (the enrollment is active, so the page is the authorization page)
    let inv = d.invite(MINJI, "Fabrikam Korea Ltd.")["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let plink = d
        .wait_mails(MINJI, "to authorize it", 1)
        .pop()
        .unwrap_or_else(|| panic!("invitation"))
        .link_path();
    none_acts(
        &d,
        &plink,
        &inv,
        &[
            &[("action", "accept")],
            &[("action", "accept"), on],
            &[("action", "confirm"), on],
            &[("action", "authorize")],
            &[("action", "")],
        ],
    );
    let done = d.post(&plink, &[("action", "authorize"), on]);
    assert!(done.body.contains("result-done"), "{}", done.body);
    assert_eq!(d.state(&inv), "authorized");

    // accept_customer: "accept" with consent, or "decline"
    let cust = d.json(&[
        "invite-customer",
        "--provider",
        "contoso-kr",
        "--reseller-email",
        MINJI,
        "--email",
        "it@adatum.test",
        "--company",
        "Adatum Corp",
    ]);
    let cust = cust["id"].as_str().unwrap_or_default().to_string();
    let clink = d
        .wait_mails("it@adatum.test", "", 1)
        .pop()
        .unwrap_or_else(|| panic!("customer mail"))
        .link_path();
    none_acts(
        &d,
        &clink,
        &cust,
        &[
            &[("action", "confirm")],
            &[("action", "confirm"), on],
            &[("action", "authorize"), on],
            &[("action", "accept")],
        ],
    );
    let acc = d.post(&clink, &[("action", "accept"), on]);
    assert!(acc.body.contains("result-done"), "{}", acc.body);
    assert_eq!(d.state(&cust), "accepted");
}

#[test]
fn names_cannot_hide_or_reorder_text() {
    let d = Daemon::start(Options::default());
    for (i, bad) in [
        "Fabrikam\u{202e}dtL",
        "Fabrikam\u{2066}x",
        "Fabrikam\u{2028}Ltd",
        "Fabrikam\u{2029}Ltd",
        "Fabrikam\u{200f}\u{202d}",
    ]
    .iter()
    .enumerate()
    {
        let email = format!("bidi{i}@fabrikam.test");
        let (ok, out, err) = d.cli(&[
            "invite",
            "--provider",
            "contoso-kr",
            "--email",
            &email,
            "--company",
            bad,
            "--country",
            "KR",
        ]);
        assert!(!ok, "{bad:?} was accepted: {out}");
        assert!(err.contains("company"), "the error names the field: {err}");
    }
    // the same in a CSV row's contact name, with the line named
    let csv = d.dir.path().join("bidi.csv");
    std::fs::write(
        &csv,
        "email,company,country,contact_name\nok@fabrikam.test,Fabrikam,KR,Kim Minji\n\
         bad@fabrikam.test,Fabrikam,KR,Kim\u{202e}ijniM\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (_, out, _) = d.cli(&[
        "--json",
        "invite",
        "--provider",
        "contoso-kr",
        "--csv",
        csv.to_str().unwrap_or_default(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["queued"], 1, "{v}");
    assert_eq!(v["rejected"], 1, "{v}");
    let row = &v["rows"][1];
    assert_eq!(row["line"], 3, "{v}");
    assert!(
        row["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("contact_name"),
        "{v}"
    );
    assert!(d
        .json(&["list", "invitations"])
        .as_array()
        .is_some_and(|a| a.len() == 1));
}

#[test]
fn encoded_word_shaped_names_reach_the_reader_literally() {
    let d = Daemon::start(Options::default());
    let company = "=?utf-8?b?Q29udG9zbyBTZWN1cml0eQ==?= Ltd";
    let name = "=?utf-8?q?IT_Admin?=";
    let csv = d.dir.path().join("ew.csv");
    std::fs::write(
        &csv,
        format!("email,company,country,contact_name\nminji@fabrikam.test,{company},KR,{name}\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let v = d.json(&[
        "invite",
        "--provider",
        "contoso-kr",
        "--csv",
        csv.to_str().unwrap_or_default(),
    ]);
    assert_eq!(v["queued"], 1, "{v}");
    let mail = d
        .wait_mails("minji@fabrikam.test", "", 1)
        .pop()
        .unwrap_or_else(|| panic!("mail"));
    // what a mail client shows after decoding every encoded word
    assert!(
        mail.subject.contains(company),
        "the subject shows the company as typed: {:?}",
        mail.subject
    );
    let raw = std::fs::read(d.outbox_dir().join(format!("{}.eml", mail_ref(&mail))))
        .unwrap_or_else(|e| panic!("{e}"));
    let parsed = mail_parser::MessageParser::default()
        .parse(&raw)
        .unwrap_or_else(|| panic!("eml"));
    let to_name = parsed
        .to()
        .and_then(|a| a.first())
        .and_then(|a| a.name())
        .unwrap_or_default()
        .to_string();
    assert_eq!(to_name, name, "the display name shows the name as typed");
    assert!(
        !String::from_utf8_lossy(&raw).contains("Subject: =?utf-8?b?Q29udG9zbyBTZWN1cml0eQ==?=")
    );
}

/// The outbox file name of a message (`<ref>.eml`, the ref being its Message-ID's local part).
fn mail_ref(m: &crate::harness::Mail) -> String {
    m.message_id
        .split('@')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn export_defuses_fullwidth_and_hidden_formulas() {
    let d = Daemon::start(Options::default());
    let companies = [
        ("a@fabrikam.test", "＝HYPERLINK(\"http://x\")"),
        ("b@fabrikam.test", "\u{200b}=1+1"),
        ("c@fabrikam.test", "＠SUM(A1)"),
        ("d@fabrikam.test", "Fabrikam"),
    ];
    for (email, company) in companies {
        d.invite(email, company);
    }
    let (ok, csv, err) = d.cli(&["export", "--format", "csv"]);
    assert!(ok, "{err}");
    let mut rdr = csv::Reader::from_reader(csv.as_bytes());
    let cells: Vec<String> = rdr
        .records()
        .filter_map(Result::ok)
        .filter_map(|r| r.get(5).map(str::to_string))
        .collect();
    for (_, company) in companies {
        let want = if company == "Fabrikam" {
            company.to_string()
        } else {
            format!("'{company}")
        };
        assert!(cells.contains(&want), "{want:?} not in {cells:?}");
    }
}

#[test]
fn escape_sequences_from_senders_are_shown_escaped() {
    let d = Daemon::start(Options::default());
    let (_, mail) = d.invite_one(MINJI, "Fabrikam Korea Ltd.");
    let esc = "\u{1b}]0;owned\u{7}\u{1b}[2J";
    let raw = format!(
        "From: Eve\u{1b}[2J <{MINJI}>\r\nTo: {}\r\nSubject: Re: {esc}hi\r\nMessage-ID: <esc{esc}1@fabrikam.test>\r\n\
         In-Reply-To: <{}>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         {esc}Hello there\r\n",
        mail.reply_to, mail.message_id
    );
    d.deliver("esc", &raw);
    crate::harness::wait_for(
        "the message handled",
        std::time::Duration::from_secs(20),
        || {
            let v = d.json(&["inbound"]);
            v.as_array().is_some_and(|a| !a.is_empty()).then_some(())
        },
    );
    let (ok, out, err) = d.cli(&["inbound"]);
    assert!(ok, "{err}");
    assert!(out.contains("Hello there"), "{out}");
    assert!(
        !out.contains('\u{1b}') && !out.contains('\u{7}'),
        "raw escape in CLI output: {out:?}"
    );
    assert!(out.contains("\\u{1b}"), "the escape is shown: {out}");
    let log = d.log();
    assert!(
        !log.contains('\u{1b}') && !log.contains('\u{7}'),
        "raw escape in the log: {log:?}"
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every file and directory under `dir` (itself included) with group/other bits set.
fn readable_by_others(dir: &Path, out: &mut Vec<String>) {
    if mode(dir) & 0o077 != 0 {
        out.push(format!("{} {:o}", dir.display(), mode(dir)));
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            readable_by_others(&p, out);
        } else if mode(&p) & 0o077 != 0 {
            out.push(format!("{} {:o}", p.display(), mode(&p)));
        }
    }
}

#[test]
fn what_the_daemon_writes_is_private() {
    let d = Daemon::start(Options::default());
    d.invite_one(MINJI, "Fabrikam Korea Ltd.");
    let mut open = Vec::new();
    // with PostgreSQL there is no store directory (the database's files are the server's)
    let subs: &[&str] = if crate::harness::on_postgres() {
        &["outbox", "keys"]
    } else {
        &["outbox", "store", "keys"]
    };
    for sub in subs {
        readable_by_others(&d.dir.path().join(sub), &mut open);
    }
    assert!(open.is_empty(), "readable by other users: {open:#?}");
    assert_eq!(mode(&d.dir.path().join("admin.sock")), 0o600);
}
