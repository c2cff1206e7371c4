//! The whole invitation loop on the embedded default (file outbox, maildir inbox), end to end,
//! and its side paths: decline, expiry with reminder, bounce, replies that must change nothing.

use crate::harness::{reply, Daemon, Options};

const CSV: &str = "email,company,country,contact_name,locale,notes\n\
minji.kim@fabrikam.test,Fabrikam Korea Ltd.,KR,Kim Minji,ko-KR,first\n\
jisoo.park@northwind.test,Northwind Korea,KR,Park Jisoo,,second\n\
MINJI.KIM@fabrikam.test,Fabrikam again,KR,,,duplicate of line 2\n\
not-an-address,Broken Co,KR,,,bad email\n\
someone@gmail.com,Webmail Co,KR,,,webmail\n\
taro@adatum.test,Adatum Japan,JP,,,country not in markets\n\
\"evil@contoso-evil.test\",\"Evil\nBcc: x@y.test\",KR,,,control characters\n";

fn find_row(v: &serde_json::Value, line: u64) -> &serde_json::Value {
    v["rows"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["line"] == line))
        .unwrap_or_else(|| panic!("no row for line {line}: {v}"))
}

#[test]
fn whole_loop_csv_to_customer() {
    let d = Daemon::start(Options::default());
    let csv = d.dir.path().join("resellers.csv");
    std::fs::write(&csv, CSV).unwrap_or_else(|e| panic!("{e}"));

    // CSV with good, duplicate and bad rows: never stops at a bad row, each reported by line.
    let bulk = d.json(&[
        "invite",
        "--provider",
        "contoso-kr",
        "--csv",
        csv.to_str().unwrap_or_default(),
    ]);
    assert_eq!(bulk["queued"], 2, "{bulk}");
    assert_eq!(bulk["existing"], 1, "{bulk}");
    assert_eq!(bulk["rejected"], 4, "{bulk}");
    assert_eq!(find_row(&bulk, 4)["outcome"], "existing");
    assert_eq!(find_row(&bulk, 4)["id"], find_row(&bulk, 2)["id"]);
    assert!(find_row(&bulk, 5)["reason"]
        .as_str()
        .unwrap_or("")
        .contains("email"));
    assert!(find_row(&bulk, 6)["reason"]
        .as_str()
        .unwrap_or("")
        .contains("web-based mail"));
    assert!(find_row(&bulk, 7)["reason"]
        .as_str()
        .unwrap_or("")
        .contains("markets"));
    assert!(find_row(&bulk, 8)["reason"]
        .as_str()
        .unwrap_or("")
        .contains("control character"));
    let minji = find_row(&bulk, 2)["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(find_row(&bulk, 3)["outcome"], "queued");

    // Inviting again by hand reports the existing record (idempotent bulk runs).
    let again = d.invite("minji.kim@fabrikam.test", "F");
    assert_eq!(again["existing"], true);
    assert_eq!(again["id"], minji.as_str());

    // Exactly one email per queued row.
    let inv = d.wait_mails("minji.kim@fabrikam.test", "", 1);
    d.wait_mails("jisoo.park@northwind.test", "", 1);
    d.wait_all_sent(std::time::Duration::from_secs(20));
    assert_eq!(d.mails("minji.kim@fabrikam.test", None).len(), 1);
    assert_eq!(d.mails("jisoo.park@northwind.test", None).len(), 1);
    let all_eml = std::fs::read_dir(d.outbox_dir())
        .map(|r| {
            r.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(all_eml, 2, "no mail for duplicate or rejected rows");
    let inv = &inv[0];
    assert_eq!(inv.auto_submitted, "auto-generated");
    assert!(inv.reply_to.starts_with("replies+"), "{}", inv.reply_to);
    let link = inv.link_path();
    assert!(
        !inv.subject.contains(&link[3..]),
        "token never in the subject"
    );
    assert!(
        !inv.html.is_empty() && !inv.text.is_empty(),
        "multipart text + html"
    );

    // GET and HEAD change nothing (mail scanners fetch links); the page is the enrollment form.
    for _ in 0..3 {
        let g = d.get(&link);
        assert_eq!(g.status, 200);
        assert!(
            g.body.contains("name=\"action\" value=\"enroll\""),
            "{}",
            g.body
        );
        assert_eq!(g.header("cache-control"), Some("no-store"));
        assert!(g
            .header("content-security-policy")
            .unwrap_or("")
            .contains("frame-ancestors 'none'"));
        assert_eq!(d.head(&link).status, 200);
    }
    assert_eq!(d.state(&minji), "invited");
    assert_eq!(
        d.json(&["show", &minji])["history"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // POST authorize without consent is refused.
    let r = d.post(&link, &[("action", "authorize")]);
    assert_eq!(r.status, 422);
    assert_eq!(d.state(&minji), "invited");

    // The enrollment form: first with errors (kept values, message per field), then right.
    let mut form = vec![
        ("action", "enroll"),
        ("company", "Fabrikam Korea Ltd."),
        ("country", "KR"),
        ("street", "123 Teheran-ro"),
        ("city", "Seoul"),
        ("postal_code", "06236"),
        ("contact_name", "Kim Minji"),
        ("contact_phone", "+82 2 555 0100"),
        ("support_email", "support@fabrikam.test"),
        ("support_phone", "+82 2 555 0199"),
        ("website", ""),
        ("mpn_id", "6543210"),
        ("mpn_country", "JP"),
        ("locale", "ko-KR"),
    ];
    let bad = d.post(&link, &form);
    assert_eq!(bad.status, 422);
    assert!(bad.body.contains("Teheran-ro"), "typed values are kept");
    assert!(d
        .json(&["list", "enrollments"])
        .as_array()
        .is_some_and(|a| a.is_empty()));
    form.retain(|(k, _)| *k != "mpn_country");
    form.push(("mpn_country", "KR"));
    let ok = d.post(&link, &form);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let enrollments = d.json(&["list", "enrollments"]);
    let enr = enrollments[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(enrollments[0]["state"], "pending_verification");
    assert_eq!(
        enrollments[0]["email"], "minji.kim@fabrikam.test",
        "primary contact fixed to the invited address"
    );

    // Contact verification by reply (Korean, quoted text below).
    let ver = d
        .wait_mails("minji.kim@fabrikam.test", "", 2)
        .pop()
        .unwrap_or_else(|| panic!("verification mail"));
    let body = "네, 확인합니다.\r\n\r\n2026년 11월 24일 (화) 오후 2:05, Contoso <partners@invited.test>님이 작성:\r\n> 아래 링크를 눌러 확인하세요";
    d.deliver(
        "reply-verify",
        &reply(
            "Minji.Kim@Fabrikam.test",
            &ver,
            "verify-reply-1@fabrikam.test",
            body,
            "",
        ),
    );
    d.wait_state(&enr, "in_review");
    let inbound = d.wait_inbound("verify-reply-1@fabrikam.test");
    assert_eq!(inbound["outcome"], "command");

    // Staff approve; the agreement is accepted by link.
    let approved = d.json(&["review", "approve", &enr]);
    assert_eq!(approved["state"], "approved");
    let agreement = d
        .wait_mails("minji.kim@fabrikam.test", "", 4)
        .pop()
        .unwrap_or_else(|| panic!("agreement mail"));
    let alink = agreement.link_path();
    assert_eq!(
        d.post(&alink, &[("action", "accept")]).status,
        422,
        "consent needed"
    );
    let acc = d.post(&alink, &[("action", "accept"), ("consent", "on")]);
    assert_eq!(acc.status, 200, "{}", acc.body);
    assert_eq!(d.state(&enr), "active");

    // The pending invitation is re-sent with a fresh link; the old one is dead.
    let fresh = crate::harness::wait_for(
        "re-sent invitation",
        std::time::Duration::from_secs(20),
        || {
            d.mails("minji.kim@fabrikam.test", None)
                .into_iter()
                .find(|m| {
                    m.text.contains("/t/")
                        && ![&link, &alink, &ver.link_path()].contains(&&m.link_path())
                })
        },
    );
    let flink = fresh.link_path();
    assert_eq!(d.get(&link).status, 404, "old link no longer valid");
    let page = d.get(&flink);
    assert!(
        page.body.contains("name=\"consent\""),
        "authorization page with the consent box"
    );

    // Authorization by link, with consent.
    let done = d.post(&flink, &[("action", "authorize"), ("consent", "on")]);
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(d.state(&minji), "authorized");
    d.wait_mails("ops@contoso.test", "", 1);

    // Each is listed on the other's side.
    let resellers = d.json(&["list", "resellers", "--provider", "contoso-kr"]);
    assert!(
        resellers
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["email"] == "minji.kim@fabrikam.test")),
        "{resellers}"
    );
    let providers = d.json(&[
        "list",
        "providers",
        "--reseller-email",
        "minji.kim@fabrikam.test",
    ]);
    assert!(
        providers
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["provider"] == "contoso-kr")),
        "{providers}"
    );

    // Customer invitation for the reseller and its provider at once.
    let refused = d.cli_ok(&[
        "invite-customer",
        "--provider",
        "contoso-kr",
        "--reseller-email",
        "jisoo.park@northwind.test",
        "--email",
        "it@adatum.test",
        "--company",
        "Adatum",
    ]);
    assert!(
        refused.is_err(),
        "needs an authorized provider authorization"
    );
    let cust = d.json(&[
        "invite-customer",
        "--provider",
        "contoso-kr",
        "--reseller-email",
        "minji.kim@fabrikam.test",
        "--email",
        "it@adatum.test",
        "--company",
        "Adatum Corp",
    ]);
    let cust_id = cust["id"].as_str().unwrap_or_default().to_string();
    let cmail = d
        .wait_mails("it@adatum.test", "", 1)
        .pop()
        .unwrap_or_else(|| panic!("customer mail"));
    let clink = cmail.link_path();
    assert_eq!(d.get(&clink).status, 200);
    assert_eq!(d.state(&cust_id), "invited");
    let acc = d.post(&clink, &[("action", "accept"), ("consent", "on")]);
    assert_eq!(acc.status, 200);
    let shown = d.json(&["show", &cust_id]);
    assert_eq!(shown["state"], "accepted");
    let rel: Vec<&str> = shown["relationships"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["kind"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(rel, vec!["reseller_customer", "provider_customer"]);
    assert_eq!(
        d.json(&[
            "list",
            "customers",
            "--provider",
            "contoso-kr",
            "--state",
            "accepted"
        ])
        .as_array()
        .map(Vec::len),
        Some(1)
    );

    // The history tells the story, channel by channel.
    let h = d.json(&["show", &enr])["history"].clone();
    let channels: Vec<&str> = h
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["channel"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(channels, vec!["link", "reply", "cli", "link"]);
}

#[test]
fn decline_notifies_the_provider() {
    let d = Daemon::start(Options::default());
    let (id, m) = d.invite_one("lee@tailspin.test", "Tailspin");
    let res = d.post(&m.link_path(), &[("action", "decline")]);
    assert_eq!(res.status, 200);
    assert_eq!(d.state(&id), "declined");
    d.wait_mails("ops@contoso.test", "", 1);
    // the same link now shows the generic page
    assert_eq!(d.get(&m.link_path()).status, 404);
    // a declined invitation is no longer live: inviting again makes a new record
    let again = d.invite("lee@tailspin.test", "Tailspin");
    assert_eq!(again["existing"], false);
}

#[test]
fn expiry_with_a_reminder_first() {
    let d = Daemon::start(Options {
        invitation_ttl: "3s",
        reminder_after: "1s",
        ..Options::default()
    });
    let (id, first) = d.invite_one("kim@wingtip.test", "Wingtip");
    let mails = d.wait_mails("kim@wingtip.test", "", 2);
    assert_eq!(
        mails[1].link_path(),
        first.link_path(),
        "the reminder carries the same link"
    );
    d.wait_state(&id, "expired");
    assert_eq!(d.get(&first.link_path()).status, 404);
    let h = d.json(&["show", &id])["history"].clone();
    assert_eq!(
        h.as_array()
            .and_then(|a| a.last())
            .map(|t| t["channel"].clone()),
        Some("timer".into())
    );
}

#[test]
fn bounce_and_replies_that_change_nothing() {
    let d = Daemon::start(Options::default());
    let a = d.invite("gone@fabrikam.test", "Fabrikam");
    let b = d.invite("choi@litware.test", "Litware");
    let (a, b) = (
        a["id"].as_str().unwrap_or_default().to_string(),
        b["id"].as_str().unwrap_or_default().to_string(),
    );
    let ma = d
        .wait_mails("gone@fabrikam.test", "", 1)
        .pop()
        .unwrap_or_else(|| panic!("mail"));
    let mb = d
        .wait_mails("choi@litware.test", "", 1)
        .pop()
        .unwrap_or_else(|| panic!("mail"));

    // A Postfix-style DSN for the first invitation.
    let dsn = format!(
        "Return-Path: <>\r\nFrom: MAILER-DAEMON@mx.fabrikam.test (Mail Delivery System)\r\nTo: {rt}\r\nSubject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn-1@mx.fabrikam.test>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B1\"\r\n\r\n--B1\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you that your message could not be delivered.\r\n\r\n<gone@fabrikam.test>: host mx.fabrikam.test said: 550 5.1.1 User unknown\r\n\r\n--B1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.fabrikam.test\r\n\r\nFinal-Recipient: rfc822; gone@fabrikam.test\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <gone@fabrikam.test>: Recipient address rejected: User unknown\r\n\r\n--B1\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: partners@invited.test\r\nTo: gone@fabrikam.test\r\nMessage-ID: <{mid}>\r\nSubject: {subj}\r\n\r\n--B1--\r\n",
        rt = ma.reply_to, mid = ma.message_id, subj = ma.subject
    );
    d.deliver("dsn", &dsn);
    d.wait_state(&a, "undeliverable");
    let h = d.json(&["show", &a])["history"].clone();
    let last = h
        .as_array()
        .and_then(|x| x.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(last["channel"], "bounce");
    assert!(
        last["detail"].as_str().unwrap_or("").contains("5.1.1"),
        "{last}"
    );
    d.wait_mails("ops@contoso.test", "", 1);

    // A reply from another address: recorded, no change.
    d.deliver(
        "spoof",
        &reply(
            "attacker@evil.test",
            &mb,
            "spoof-1@evil.test",
            "AUTHORIZE",
            "",
        ),
    );
    let i = d.wait_inbound("spoof-1@evil.test");
    assert_eq!(i["outcome"], "command");
    assert!(
        i["effect"]
            .as_str()
            .unwrap_or("")
            .contains("not the record's recipient"),
        "{i}"
    );
    // An out-of-office reply quoting the invitation: ignored.
    let ooo = reply(
        "choi@litware.test",
        &mb,
        "ooo-1@litware.test",
        "I am out of the office until Monday.\r\n\r\n> reply AUTHORIZE to accept",
        "Auto-Submitted: auto-replied\r\nX-Autoreply: yes\r\n",
    );
    d.deliver("ooo", &ooo);
    let i = d.wait_inbound("ooo-1@litware.test");
    assert_eq!(i["outcome"], "auto_reply");
    // A reply with no DMARC pass cannot authorize under the default policy.
    let nodmarc = reply(
        "choi@litware.test",
        &mb,
        "nodmarc-1@litware.test",
        "AUTHORIZE",
        "",
    )
    .replace("dmarc=pass", "dmarc=fail");
    d.deliver("nodmarc", &nodmarc);
    let i = d.wait_inbound("nodmarc-1@litware.test");
    assert!(i["effect"].as_str().unwrap_or("").contains("dmarc"), "{i}");
    assert_eq!(d.state(&b), "invited");
    // the same message delivered twice is handled once
    d.deliver(
        "spoof-again",
        &reply(
            "attacker@evil.test",
            &mb,
            "spoof-1@evil.test",
            "AUTHORIZE",
            "",
        ),
    );
    crate::harness::wait_for(
        "the duplicate moved to cur/",
        std::time::Duration::from_secs(20),
        || {
            std::fs::read_dir(d.dir.path().join("inbox/new"))
                .ok()
                .map(|r| r.count() == 0)
                .and_then(|e| e.then_some(()))
        },
    );
    let n = d.json(&["inbound"]).as_array().map(|a| {
        a.iter()
            .filter(|i| i["message_id"] == "spoof-1@evil.test")
            .count()
    });
    assert_eq!(n, Some(1));
    // decline by reply needs no DMARC
    d.deliver(
        "decline",
        &reply(
            "choi@litware.test",
            &mb,
            "decline-1@litware.test",
            "No thanks, we work with another distributor.",
            "",
        ),
    );
    d.wait_state(&b, "declined");
}
