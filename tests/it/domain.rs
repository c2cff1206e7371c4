//! Domain rules that span records: a customer invitation lives only while its reseller
//! authorizes the provider.

use crate::harness::{Daemon, Options};

const RESELLER: &str = "minji.kim@fabrikam.test";

/// An active enrollment and an authorized provider authorization for RESELLER (contoso-kr),
/// then `n` customer invitations; returns (authorization id, customer ids with their links).
pub fn authorized_reseller_with_customers(d: &Daemon, n: usize) -> (String, Vec<(String, String)>) {
    let inv = d.invite(RESELLER, "Fabrikam Korea Ltd.")["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let link = d
        .wait_mails(RESELLER, "to authorize it", 1)
        .pop()
        .unwrap_or_else(|| panic!("invitation"))
        .link_path();
    let enroll = [
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
        ("mpn_id", "6543210"),
        ("mpn_country", "KR"),
        ("locale", "en-US"),
    ];
    assert_eq!(d.post(&link, &enroll).status, 200);
    let enr = d.json(&["list", "enrollments"])[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let verify = d.wait_mails(RESELLER, "confirm the primary contact", 1);
    assert_eq!(
        d.post(&verify[0].link_path(), &[("action", "confirm")])
            .status,
        200
    );
    d.json(&["review", "approve", &enr]);
    let agreement = d.wait_mails(RESELLER, "accept the partner agreement", 1);
    let on = ("consent", "on");
    assert_eq!(
        d.post(&agreement[0].link_path(), &[("action", "accept"), on])
            .status,
        200
    );
    // the invitation is re-sent with a fresh link once the enrollment is active
    let fresh = d.wait_mails(RESELLER, "to authorize it", 2);
    let flink = fresh
        .iter()
        .map(|m| m.link_path())
        .find(|l| *l != link)
        .unwrap_or_else(|| panic!("fresh link"));
    assert_eq!(d.post(&flink, &[("action", "authorize"), on]).status, 200);
    assert_eq!(d.state(&inv), "authorized");
    let customers = (0..n)
        .map(|i| {
            let email = format!("it{i}@adatum.test");
            let c = d.json(&[
                "invite-customer",
                "--provider",
                "contoso-kr",
                "--reseller-email",
                RESELLER,
                "--email",
                &email,
                "--company",
                "Adatum Corp",
            ]);
            let id = c["id"].as_str().unwrap_or_default().to_string();
            let link = d
                .wait_mails(&email, "", 1)
                .pop()
                .unwrap_or_else(|| panic!("customer mail"))
                .link_path();
            (id, link)
        })
        .collect();
    (inv, customers)
}

#[test]
fn the_enrollment_form_starts_with_the_contact_name_the_csv_gave() {
    let d = Daemon::start(Options::default());
    let csv = d.dir.path().join("named.csv");
    std::fs::write(
        &csv,
        format!("email,company,country,contact_name\n{RESELLER},Fabrikam,KR,Kim Minji\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    d.json(&[
        "invite",
        "--provider",
        "contoso-kr",
        "--csv",
        csv.to_str().unwrap_or_default(),
    ]);
    let link = d.wait_mails(RESELLER, "to authorize it", 1)[0].link_path();
    let page = d.get(&link);
    assert!(
        page.body
            .contains(r#"name="contact_name" value="Kim Minji""#),
        "{}",
        page.body
    );
}

#[test]
fn revoking_the_provider_revokes_its_pending_customer_invitations() {
    let d = Daemon::start(Options::default());
    let (auth, customers) = authorized_reseller_with_customers(&d, 3);
    // one customer accepts before the revocation: that one stays accepted
    let (accepted, alink) = &customers[0];
    let acc = d.post(alink, &[("action", "accept"), ("consent", "on")]);
    assert!(acc.body.contains("result-done"), "{}", acc.body);

    let revoked = d.json(&["revoke", &auth]);
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(d.state(accepted), "accepted");
    for (id, link) in &customers[1..] {
        assert_eq!(d.state(id), "revoked", "{id}");
        let last = d.last_transition(id);
        assert_eq!(last["channel"], "cli", "{last}");
        assert!(
            last["detail"].as_str().unwrap_or_default().contains(&auth),
            "the history names the authorization: {last}"
        );
        // the customer's link is dead: the generic page, nothing changes
        let r = d.post(link, &[("action", "accept"), ("consent", "on")]);
        assert!(!r.body.contains("result-done"), "{}", r.body);
        assert_eq!(d.get(link).status, 404);
        assert_eq!(d.state(id), "revoked");
    }
}

#[test]
fn accepting_a_customer_invitation_rechecks_the_provider_authorization() {
    if crate::harness::sled_only("edits a sled store written before revocations cascaded") {
        return;
    }
    let mut d = Daemon::start(Options::default());
    let (auth, customers) = authorized_reseller_with_customers(&d, 1);
    let (cust, link) = customers[0].clone();
    // A store written before revocations revoked customer invitations (or any other path that
    // leaves one behind): the authorization is revoked, the customer invitation still waits.
    d.stop();
    {
        let db = sled::open(d.dir.path().join("store")).unwrap_or_else(|e| panic!("{e}"));
        let tree = db.open_tree("invited").unwrap_or_else(|e| panic!("{e}"));
        let key = format!("r/{auth}");
        let raw = tree
            .get(&key)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no {key}"));
        let mut rec: serde_json::Value =
            serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("{e}"));
        let text = rec.to_string();
        assert!(text.contains("\"authorized\""), "{text}");
        let revoked = text.replacen("\"state\":\"authorized\"", "\"state\":\"revoked\"", 1);
        rec = serde_json::from_str(&revoked).unwrap_or_else(|e| panic!("{e}"));
        tree.insert(&key, serde_json::to_vec(&rec).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
        db.flush().unwrap_or_else(|e| panic!("{e}"));
    }
    d.spawn();
    assert_eq!(d.state(&auth), "revoked");
    assert_eq!(d.state(&cust), "invited");
    let r = d.post(&link, &[("action", "accept"), ("consent", "on")]);
    assert!(!r.body.contains("result-done"), "{}", r.body);
    assert!(
        r.body.contains("no longer works with this provider"),
        "{}",
        r.body
    );
    assert_eq!(d.state(&cust), "invited", "nothing accepted");
}
