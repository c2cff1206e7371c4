//! One-click unsubscribe (RFC 8058) and the suppression list, through the real daemon: the
//! `List-Unsubscribe` headers of an invitation, its `/u/…` link (GET and HEAD change nothing; a
//! POST declines and suppresses), the mailto, hard bounces (a DSN, and a 5xx at send time),
//! what a suppressed address gets from `invite` (CSV row `suppressed`, no mail), and staff
//! lifting it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use invited::model::{Channel, Email, Purpose, RecordId};
use invited::token::{Claims, Keys};

use crate::harness::{wait_for, Daemon, Mail, Options, Response};

const KIM: &str = "kim@fabrikam.test";
const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

fn keys_of(d: &Daemon) -> Keys {
    let mut files = std::collections::BTreeMap::new();
    files.insert("k1".to_string(), d.dir.path().join("keys/k1.key"));
    Keys::load("k1", &files).unwrap_or_else(|e| panic!("{e}"))
}

/// A POST as a mail provider's server sends it: no cookie, no Referer, just the body.
fn post_raw(d: &Daemon, path: &str, content_type: &str, body: &str) -> Response {
    let mut s = TcpStream::connect(&d.http).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: links.invited.test\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Response {
        status,
        headers: Vec::new(),
        body: body.to_string(),
    }
}

fn one_click(d: &Daemon, path: &str) -> Response {
    post_raw(d, path, "application/x-www-form-urlencoded", ONE_CLICK)
}

fn suppressions(d: &Daemon) -> Vec<serde_json::Value> {
    d.json(&["suppress", "list"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Outbox items (queued or sent) addressed to `to`.
fn outbox_to(d: &Daemon, to: &str) -> usize {
    d.json(&["outbox"])
        .as_array()
        .map(|a| a.iter().filter(|i| i["to"] == to).count())
        .unwrap_or(0)
}

fn csv(d: &Daemon, name: &str, rows: &[&str]) -> String {
    let path = d.dir.path().join(name);
    let mut text = String::from("email,company,country\n");
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path.to_string_lossy().into_owned()
}

fn id_of(v: &serde_json::Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

#[test]
fn one_click_post_declines_suppresses_and_later_rows_report_suppressed() {
    let d = Daemon::start(Options::default());
    let (id, mail) = d.invite_one(KIM, "Fabrikam");

    // the headers RFC 8058 asks for: an https (here: the public URL's) link and a mailto
    assert_eq!(mail.list_unsubscribe_post, ONE_CLICK, "{mail:?}");
    let uris = mail.unsubscribe_uris();
    assert_eq!(uris.len(), 2, "{uris:?}");
    let path = mail.unsubscribe_path();
    assert!(
        uris[0].ends_with(&path) && path.starts_with("/u/"),
        "{uris:?}"
    );
    let (mailto, subject) = mail.unsubscribe_mailto();
    assert_eq!(
        mailto, mail.reply_to,
        "the mailto is the message's own reply address"
    );
    assert_eq!(subject, "unsubscribe");
    assert!(
        !mail.subject.contains(&path[3..]),
        "no token in the subject"
    );
    assert!(mail.text.contains(&path), "the link is in the footer too");

    // GET and HEAD (scanners, previews) change nothing
    let page = d.get(&path);
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body
            .contains("name=\"List-Unsubscribe\" value=\"One-Click\"")
            && page.body.contains(&format!("action=\"{path}?lang")),
        "the confirm page's button posts the one-click form: {}",
        page.body
    );
    assert!(
        page.body.contains("declined"),
        "it says the invitation is declined"
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let ko = d.get(&format!("{path}?lang=ko-KR"));
    assert!(
        ko.status == 200 && ko.body.contains("수신 거부"),
        "{}",
        ko.body
    );
    assert_eq!(d.head(&path).status, 200);
    assert_eq!(d.state(&id), "invited", "GET/HEAD changed nothing");
    assert!(suppressions(&d).is_empty());
    assert_eq!(
        d.json(&["show", &id])["history"].as_array().map(Vec::len),
        Some(1)
    );

    // the one-click POST
    let r = one_click(&d, &path);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("result-done"), "{}", r.body);
    assert_eq!(d.state(&id), "declined");
    let last = d.last_transition(&id);
    assert_eq!(last["channel"], "link", "{last}");
    assert!(
        last["detail"]
            .as_str()
            .unwrap_or("")
            .contains("unsubscribe"),
        "{last}"
    );
    let list = suppressions(&d);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["provider"], "contoso-kr");
    assert_eq!(list[0]["email"], KIM);
    assert_eq!(list[0]["channel"], "link");
    assert!(list[0]["at"].as_str().is_some_and(|a| a.ends_with('Z')));
    assert!(list[0]["reason"].as_str().is_some_and(|r| !r.is_empty()));
    // the provider hears of the decline
    let notice = d.wait_mails("ops@contoso.test", "", 1).pop();
    assert!(notice.is_some_and(|n| n.text.contains("unsubscribed")));
    // a second POST (a retrying provider) is answered, and changes nothing more
    let again = one_click(&d, &path);
    assert!(
        again.status == 200 && again.body.contains("result-already"),
        "{}",
        again.body
    );
    let h = d.json(&["show", &id])["history"].clone();
    assert_eq!(
        h.as_array()
            .map(|a| a.iter().filter(|t| t["to"] == "declined").count()),
        Some(1)
    );
    // an opened link now says so, still without changing anything
    let opened = d.get(&path);
    assert!(opened.body.contains("badge-already"), "{}", opened.body);

    // a later CSV: the suppressed row reports `suppressed` (whatever the case of the address)
    // and sends nothing; the good row is queued; no row rejected: exit 0
    let before = outbox_to(&d, KIM);
    let file = csv(
        &d,
        "later.csv",
        &[
            "Kim@Fabrikam.TEST,Fabrikam,KR",
            "lee@northwind.test,Northwind,KR",
        ],
    );
    let (code, out, err) = d.cli_code(&["invite", "--provider", "contoso-kr", "--csv", &file]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("line 2: Kim@Fabrikam.TEST: suppressed")
            && out.contains("1 queued, 0 already invited, 1 suppressed, 0 rejected"),
        "{out}"
    );
    assert_eq!(
        outbox_to(&d, KIM),
        before,
        "nothing queued for the suppressed address"
    );
    let lee = d.json(&["list", "invitations"]);
    let invited: Vec<&str> = lee
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["state"] == "invited")
        .filter_map(|r| r["email"].as_str())
        .collect();
    assert_eq!(
        invited,
        ["lee@northwind.test"],
        "no new record for the suppressed row"
    );
    // the same through --json
    let file2 = csv(&d, "again.csv", &["kim@fabrikam.test,Fabrikam,KR"]);
    let v = d.json(&["invite", "--provider", "contoso-kr", "--csv", &file2]);
    assert_eq!(
        (
            &v["queued"],
            &v["existing"],
            &v["rejected"],
            &v["suppressed"]
        ),
        (&0.into(), &0.into(), &0.into(), &1.into()),
        "{v}"
    );
    assert_eq!(v["rows"][0]["outcome"], "suppressed", "{v}");
    assert_eq!(v["rows"][0]["line"], 2, "{v}");
    assert!(v["rows"][0].get("id").is_none(), "{v}");
    // a single invite is refused, naming the list and how to lift it
    let (code, _, err) = d.cli_code(&[
        "invite",
        "--provider",
        "contoso-kr",
        "--email",
        KIM,
        "--company",
        "F",
        "--country",
        "KR",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("suppression list") && err.contains("suppress remove"),
        "{err}"
    );
    assert_eq!(outbox_to(&d, KIM), before);
    // suppression is per provider: another provider may still invite the address
    let jp = d.json(&[
        "invite",
        "--provider",
        "contoso-jp",
        "--email",
        KIM,
        "--company",
        "F",
        "--country",
        "JP",
    ]);
    assert_eq!(jp["state"], "invited", "{jp}");
    assert_eq!(outbox_to(&d, KIM), before + 1);
    let (code, out, _) = d.cli_code(&["suppress", "list", "--provider", "contoso-jp"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("0 suppressed address(es)"), "{out}");

    // staff lift it: the next invitation is sent again
    let (code, out, err) = d.cli_code(&["suppress", "list"]);
    assert!(
        code == Some(0) && out.contains(KIM) && out.contains("link"),
        "{out}{err}"
    );
    let lifted = d.json(&[
        "suppress",
        "remove",
        "--provider",
        "contoso-kr",
        "--email",
        KIM,
    ]);
    assert_eq!(lifted["email"], KIM);
    assert!(suppressions(&d).is_empty());
    let v = d.json(&["invite", "--provider", "contoso-kr", "--csv", &file2]);
    assert_eq!(v["queued"], 1, "{v}");
    let new_id = v["rows"][0]["id"].as_str().unwrap_or_default().to_string();
    assert_eq!(d.state(&new_id), "invited");
    // the first invitation, contoso-jp's, and this one
    d.wait_mails(KIM, "", 3);
    // lifting what is not on the list, or for a provider that does not exist, names the field
    let (code, _, err) = d.cli_code(&[
        "suppress",
        "remove",
        "--provider",
        "contoso-kr",
        "--email",
        KIM,
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("email") && err.contains("not on the suppression list"),
        "{err}"
    );
    let (code, _, err) = d.cli_code(&["suppress", "remove", "--provider", "nope", "--email", KIM]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("provider") && err.contains("unknown provider"),
        "{err}"
    );
    let (code, _, err) = d.cli_code(&["suppress", "list", "--provider", "nope"]);
    assert!(code == Some(1) && err.contains("unknown provider"), "{err}");
}

#[test]
fn an_unsubscribe_link_outlives_a_resend_and_takes_multipart_bodies() {
    let d = Daemon::start(Options::default());
    let (id, first) = d.invite_one(KIM, "Fabrikam");
    let old = first.unsubscribe_path();
    d.json(&["resend", &id]);
    let second = d
        .wait_mails(KIM, "", 2)
        .pop()
        .unwrap_or_else(|| panic!("resent mail"));
    assert_ne!(
        second.unsubscribe_path(),
        old,
        "the resent mail has its own link"
    );
    assert_eq!(
        d.get(&first.link_path()).status,
        404,
        "the old acting link is dead"
    );
    // the old mail's unsubscribe link still works, as multipart/form-data (RFC 8058's SHOULD)
    let body = "--b0undary\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--b0undary--\r\n";
    let r = post_raw(&d, &old, "multipart/form-data; boundary=b0undary", body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("result-done"), "{}", r.body);
    assert_eq!(d.state(&id), "declined");
}

#[test]
fn a_post_without_the_one_click_body_changes_nothing() {
    let d = Daemon::start(Options::default());
    let (id, mail) = d.invite_one(KIM, "Fabrikam");
    let path = mail.unsubscribe_path();
    for (ct, body) in [
        ("application/x-www-form-urlencoded", ""),
        ("application/x-www-form-urlencoded", "action=decline"),
        ("application/x-www-form-urlencoded", "List-Unsubscribe=yes"),
        (
            "multipart/form-data; boundary=x",
            "--x\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nOne-Click\r\n--x--\r\n",
        ),
    ] {
        let r = post_raw(&d, &path, ct, body);
        assert_eq!(r.status, 400, "{body:?}: {}", r.body);
        assert!(
            r.body.contains("value=\"One-Click\""),
            "{body:?}: the confirm page instead"
        );
        assert_eq!(d.state(&id), "invited", "{body:?}");
    }
    assert!(suppressions(&d).is_empty());
}

#[test]
fn tampered_and_misused_unsubscribe_tokens_get_the_generic_page() {
    let d = Daemon::start(Options::default());
    let (id, mail) = d.invite_one(KIM, "Fabrikam");
    let good = mail.unsubscribe_path();
    let generic = d.get("/t/not-a-token");
    assert_eq!(generic.status, 404);

    let keys = keys_of(&d);
    let rid = RecordId::parse(&id).unwrap_or_else(|| panic!("id"));
    let kim = Email::parse(KIM).unwrap_or_else(|e| panic!("{e}"));
    let far = Utc::now().timestamp() + 86_400;
    let sign = |purpose, email: &Email, expires_at| {
        keys.sign(
            &Claims {
                purpose,
                record: rid,
                generation: 0,
                expires_at,
            },
            email,
        )
    };
    // the forging below is right: the same claims, fresh, are accepted
    let fine = sign(Purpose::Unsubscribe, &kim, far);
    assert_eq!(d.get(&format!("/u/{fine}")).status, 200);

    let mut t: Vec<char> = good.chars().collect();
    let mid = t.len() / 2 + 2;
    t[mid] = if t[mid] == 'A' { 'B' } else { 'A' };
    let other = Email::parse("someone@fabrikam.test").unwrap_or_else(|e| panic!("{e}"));
    let bad: Vec<(&str, String)> = vec![
        ("tampered", t.into_iter().collect()),
        ("truncated", good[..good.len() - 3].to_string()),
        ("garbage", "/u/not-a-token".into()),
        ("undecodable", "/u/%ff%fe".into()),
        (
            "acting token at /u/",
            format!("/u/{}", &mail.link_path()[3..]),
        ),
        (
            "other recipient",
            format!("/u/{}", sign(Purpose::Unsubscribe, &other, far)),
        ),
        (
            "expired",
            format!(
                "/u/{}",
                sign(Purpose::Unsubscribe, &kim, Utc::now().timestamp() - 1)
            ),
        ),
        // an unsubscribe token is no acting token either
        ("unsubscribe token at /t/", format!("/t/{}", &good[3..])),
    ];
    for (what, path) in &bad {
        for method in ["GET", "POST"] {
            let r = if method == "GET" {
                d.get(path)
            } else {
                one_click(&d, path)
            };
            assert_eq!(r.status, generic.status, "{what} {method}");
            assert_eq!(r.body, generic.body, "{what} {method}: the generic page");
        }
        // the acting form on the unsubscribe token changes nothing either
        d.post(path, &[("action", "decline")]);
        assert_eq!(d.state(&id), "invited", "{what}");
    }
    assert!(suppressions(&d).is_empty());
}

/// An unsubscribe mail as Gmail's button sends one to a `List-Unsubscribe` mailto.
fn unsubscribe_mail(from: &str, to: &str, message_id: &str, extra: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: {to}\r\nSubject: unsubscribe\r\nMessage-ID: <{message_id}>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n{extra}\r\nThis message was automatically generated by Gmail.\r\n"
    )
}

#[test]
fn an_unsubscribe_mail_to_the_mailto_declines_with_channel_reply() {
    let d = Daemon::start(Options::default());
    let (id, mail) = d.invite_one(KIM, "Fabrikam");
    let (mailto, _) = mail.unsubscribe_mailto();

    // from someone else: left for a human, nothing changes
    d.deliver(
        "stranger",
        &unsubscribe_mail("someone@fabrikam.test", &mailto, "u-0@fabrikam.test", ""),
    );
    let o = d.wait_inbound("u-0@fabrikam.test");
    assert_eq!(o["outcome"], "unrecognised", "{o}");
    assert!(
        o["effect"]
            .as_str()
            .unwrap_or("")
            .contains("not the invitation's recipient"),
        "{o}"
    );
    assert_eq!(d.state(&id), "invited");
    assert!(suppressions(&d).is_empty());

    // from the recipient (marked auto-generated, as some clients do): acts
    d.deliver(
        "unsub",
        &unsubscribe_mail(
            KIM,
            &mailto,
            "u-1@fabrikam.test",
            "Auto-Submitted: auto-generated\r\n",
        ),
    );
    let o = d.wait_inbound("u-1@fabrikam.test");
    assert_eq!(o["outcome"], "unsubscribe", "{o}");
    assert_eq!(o["record"], id.as_str(), "{o}");
    assert!(
        o["effect"]
            .as_str()
            .unwrap_or("")
            .contains("invited -> declined"),
        "{o}"
    );
    assert_eq!(d.state(&id), "declined");
    assert_eq!(d.last_transition(&id)["channel"], "reply");
    let list = suppressions(&d);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["channel"], "reply");
    assert_eq!(list[0]["record"], id.as_str());
    let only = d.json(&["inbound", "--outcome", "unsubscribe"]);
    assert_eq!(only.as_array().map(Vec::len), Some(1), "{only}");

    // and a later row for that address is suppressed
    let file = csv(&d, "after.csv", &["kim@fabrikam.test,Fabrikam,KR"]);
    let v = d.json(&["invite", "--provider", "contoso-kr", "--csv", &file]);
    assert_eq!(v["rows"][0]["outcome"], "suppressed", "{v}");
}

/// A Postfix-style DSN for `mail`, whose recipient is `rcpt`.
fn dsn(mail: &Mail, rcpt: &str) -> String {
    format!(
        "Return-Path: <>\r\nFrom: MAILER-DAEMON@mx.fabrikam.test (Mail Delivery System)\r\nTo: {rt}\r\nSubject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn-u@mx.fabrikam.test>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B1\"\r\n\r\n--B1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\r\n--B1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.fabrikam.test\r\n\r\nFinal-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown\r\n\r\n--B1\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: partners@invited.test\r\nTo: {rcpt}\r\nMessage-ID: <{mid}>\r\n\r\n--B1--\r\n",
        rt = mail.reply_to,
        mid = mail.message_id
    )
}

#[test]
fn a_hard_bounce_suppresses_the_address() {
    let d = Daemon::start(Options::default());
    let gone = "gone@fabrikam.test";
    let (id, mail) = d.invite_one(gone, "Fabrikam");
    d.deliver("dsn", &dsn(&mail, gone));
    d.wait_state(&id, "undeliverable");
    let o = d.wait_inbound("dsn-u@mx.fabrikam.test");
    assert!(
        o["effect"]
            .as_str()
            .unwrap_or("")
            .contains("suppressed for contoso-kr"),
        "{o}"
    );
    let list = suppressions(&d);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        (&list[0]["email"], &list[0]["channel"]),
        (&gone.into(), &"bounce".into())
    );
    assert!(
        list[0]["reason"].as_str().unwrap_or("").contains("5.1.1"),
        "{list:?}"
    );
    let before = outbox_to(&d, gone);
    let file = csv(&d, "bounced.csv", &["gone@fabrikam.test,Fabrikam,KR"]);
    let v = d.json(&["invite", "--provider", "contoso-kr", "--csv", &file]);
    assert_eq!(
        (&v["suppressed"], &v["queued"]),
        (&1.into(), &0.into()),
        "{v}"
    );
    assert_eq!(v["rows"][0]["outcome"], "suppressed");
    assert_eq!(
        outbox_to(&d, gone),
        before,
        "no mail to a hard-bounced address"
    );
    // lifted, the address can be invited again
    d.json(&[
        "suppress",
        "remove",
        "--provider",
        "contoso-kr",
        "--email",
        gone,
    ]);
    let v = d.json(&["invite", "--provider", "contoso-kr", "--csv", &file]);
    assert_eq!(v["queued"], 1, "{v}");
    assert_eq!(outbox_to(&d, gone), before + 1);
}

#[test]
fn a_5xx_at_send_time_suppresses_the_address() {
    use crate::smtp::{free_port, smtp_options, Sink};
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let _rejecting = Sink::start(port, &tmp.path().join("d"), &["-f", "rcpt"]);
    let d = Daemon::start(smtp_options(port));
    let r = d.invite("nobody@fabrikam.test", "Fabrikam");
    d.wait_state(&id_of(&r), "undeliverable");
    let list = wait_for("the suppression", Duration::from_secs(20), || {
        let l = suppressions(&d);
        (!l.is_empty()).then_some(l)
    });
    assert_eq!(list[0]["email"], "nobody@fabrikam.test");
    assert_eq!(list[0]["channel"], "bounce");
    let file = csv(&d, "x.csv", &["nobody@fabrikam.test,Fabrikam,KR"]);
    let v = d.json(&["invite", "--provider", "contoso-kr", "--csv", &file]);
    assert_eq!(v["rows"][0]["outcome"], "suppressed", "{v}");
}

#[test]
fn mails_the_contact_asked_for_are_not_suppressed() {
    let d = Daemon::start(Options::default());
    let (_, mail) = d.invite_one(KIM, "Fabrikam");
    assert_eq!(one_click(&d, &mail.unsubscribe_path()).status, 200);
    assert_eq!(suppressions(&d).len(), 1);
    // the contact enrolls: the verification mail goes out, without List-Unsubscribe
    let file = d.dir.path().join("enroll.toml");
    std::fs::write(
        &file,
        format!(
            "company = \"Fabrikam Korea Ltd.\"\ncountry = \"KR\"\nlocale = \"en-US\"\n[address]\nstreet = \"1 Teheran-ro\"\ncity = \"Seoul\"\npostal_code = \"06236\"\n[primary_contact]\nname = \"Kim\"\nemail = \"{KIM}\"\nphone = \"+82 2 555 0100\"\n[support]\nemail = \"support@fabrikam.test\"\nphone = \"+82 2 555 0199\"\n[mpn]\nid = \"6543210\"\ncountry = \"KR\"\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let e = d.json(&["enroll", "--file", file.to_str().unwrap_or_default()]);
    assert_eq!(e["state"], "pending_verification");
    let verification = d
        .wait_mails(KIM, "", 2)
        .into_iter()
        .find(|m| m.text.contains("/t/") && m.list_unsubscribe.is_empty())
        .unwrap_or_else(|| panic!("a verification mail"));
    assert!(verification.list_unsubscribe_post.is_empty());
}

// ---- in process: the reminder guard ---------------------------------------------------------

fn app(dir: &std::path::Path) -> Arc<invited::app::App> {
    let text = crate::harness::config_text(&Options::default());
    let path = dir.join("invited.toml");
    std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    let cfg = invited::config::Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    crate::harness::give_key(path.parent().unwrap_or(&path));
    let shared = invited::daemon::load_shared(cfg.clone()).unwrap_or_else(|e| panic!("{e}"));
    let store = invited::store::Store::open(&cfg).unwrap_or_else(|e| panic!("{e}"));
    Arc::new(invited::app::App::new(store, shared))
}

/// Suppressing declines the pending invitation, so a reminder never finds a suppressed address
/// through the operations. The guard in front of the mail is checked here by putting an entry in
/// the store directly: the suppressed invitation gets no reminder, the other one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_never_go_to_a_suppressed_address() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let app = app(dir.path());
    let now = Utc::now();
    let invite = |email: &str| invited::rules::InviteRow {
        email: email.into(),
        company: "Fabrikam".into(),
        country: "KR".into(),
        ..Default::default()
    };
    let a = app
        .invite("contoso-kr", invite(KIM), Channel::Cli, now)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .id;
    let b = app
        .invite(
            "contoso-kr",
            invite("lee@northwind.test"),
            Channel::Cli,
            now,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .id;
    app.store
        .write(|txn| -> Result<(), invited::store::StoreError> {
            txn.put_suppression(&invited::store::Suppression {
                provider: "contoso-kr".into(),
                email: Email::parse(KIM).unwrap_or_else(|e| panic!("{e}")),
                at: now,
                reason: "test".into(),
                channel: Channel::Cli,
                record: None,
            });
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let ran = app
        .run_timers(now + chrono::Duration::days(11))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ran >= 2, "both reminder timers ran ({ran})");
    let reminders = |id: RecordId| {
        app.store
            .read()
            .outbox_all()
            .unwrap_or_default()
            .iter()
            .filter(|i| i.record == id && i.kind == invited::outbox::MailKind::InvitationReminder)
            .count()
    };
    assert_eq!(reminders(b), 1, "the control invitation is reminded");
    assert_eq!(reminders(a), 0, "no reminder to the suppressed address");
}
