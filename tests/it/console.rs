//! The staff console over real HTTP: sign-in, CSRF, roles, sign-out, the throttle, listeners
//! kept apart, and no password or link token on a page or in the log. (The pages in a real
//! browser: tests/browser/console.mjs.)

use crate::harness::{enrollment_file, http_with, urlenc, Daemon, Options, Response};

const ADMIN: &str = "lead@contoso.test";
const REVIEWER: &str = "reviewer@contoso.test";
const VIEWER: &str = "viewer@contoso.test";
const PW: &str = "a long enough passphrase";

fn daemon(console: &str) -> Daemon {
    let d = Daemon::start(Options {
        console: Some(console.to_string()),
        ..Options::default()
    });
    for (email, role) in [(ADMIN, "admin"), (REVIEWER, "reviewer"), (VIEWER, "viewer")] {
        let (code, out, err) = d.cli_stdin(
            &["staff", "add", email, "--role", role, "--password-stdin"],
            &format!("{PW}\n"),
        );
        assert_eq!(code, Some(0), "{out}{err}");
    }
    d
}

/// One browser's worth of state: its cookies.
struct Client {
    addr: String,
    cookies: Vec<(String, String)>,
}

impl Client {
    fn new(d: &Daemon) -> Client {
        Client {
            addr: d
                .console
                .clone()
                .unwrap_or_else(|| panic!("no console address")),
            cookies: Vec::new(),
        }
    }

    fn send(&mut self, method: &str, path: &str, body: Option<&str>) -> Response {
        let cookie: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let cookie = cookie.join("; ");
        let headers: Vec<(&str, &str)> = if cookie.is_empty() {
            Vec::new()
        } else {
            vec![("Cookie", cookie.as_str())]
        };
        let r = http_with(&self.addr, method, path, &headers, body);
        for (k, v) in &r.headers {
            if k.eq_ignore_ascii_case("set-cookie") {
                let pair = v.split(';').next().unwrap_or_default();
                if let Some((name, value)) = pair.split_once('=') {
                    self.cookies.retain(|(n, _)| n != name);
                    if !value.is_empty() && !v.contains("Max-Age=0") {
                        self.cookies.push((name.to_string(), value.to_string()));
                    }
                }
            }
        }
        r
    }

    fn get(&mut self, path: &str) -> Response {
        self.send("GET", path, None)
    }

    fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Response {
        let body: Vec<String> = form
            .iter()
            .map(|(k, v)| format!("{k}={}", urlenc(v)))
            .collect();
        self.send("POST", path, Some(&body.join("&")))
    }

    fn cookie(&self, name: &str) -> Option<String> {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// The CSRF token on a page (its first form's hidden field).
    fn csrf(&mut self, path: &str) -> String {
        let page = self.get(path);
        hidden_csrf(&page.body).unwrap_or_else(|| panic!("no csrf on {path}: {}", page.body))
    }

    fn sign_in(&mut self, email: &str, password: &str) -> Response {
        let token = self.csrf("/login");
        self.post(
            "/login",
            &[("email", email), ("password", password), ("csrf", &token)],
        )
    }
}

fn hidden_csrf(body: &str) -> Option<String> {
    let i = body.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(body[i..].split('"').next()?.to_string())
}

/// An enrollment waiting for review.
fn in_review(d: &Daemon, email: &str) -> String {
    let file = enrollment_file(d, email);
    let id = d.json(&["enroll", "--file", &file])["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ver = d
        .wait_mails(email, "", 1)
        .pop()
        .unwrap_or_else(|| panic!("verification mail"));
    assert_eq!(
        d.post(&ver.link_path(), &[("action", "confirm")]).status,
        200
    );
    assert_eq!(d.state(&id), "in_review");
    id
}

#[test]
fn sign_in_roles_csrf_and_sign_out() {
    let d = daemon("listen = \"127.0.0.1:0\"");
    let mut anon = Client::new(&d);
    // signed out: every page leads to the sign-in page
    for path in [
        "/",
        "/records",
        "/review",
        "/outbox",
        "/inbound",
        "/export.csv",
        "/nope",
    ] {
        let r = anon.get(path);
        assert_eq!(r.status, 303, "{path}");
        assert_eq!(r.header("location"), Some("/login"), "{path}");
    }
    // the sign-in form: a double-submit token; without it, or with another, 403
    let page = anon.get("/login");
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    let r = anon.post("/login", &[("email", ADMIN), ("password", PW)]);
    assert_eq!(r.status, 403);
    let r = anon.post(
        "/login",
        &[("email", ADMIN), ("password", PW), ("csrf", "forged")],
    );
    assert_eq!(r.status, 403);
    assert!(anon.cookie("invited_console").is_none());

    let mut admin = Client::new(&d);
    let r = admin.sign_in(ADMIN, PW);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("/"));
    let set = r
        .headers
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v.starts_with("invited_console="))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "http public URL: no Secure: {set}");
    let overview = admin.get("/");
    assert_eq!(overview.status, 200);
    assert!(overview.body.contains(ADMIN));

    // a review, by a viewer (refused: 403 page, nothing changes), without a token, with a
    // wrong one (403, nothing changes), then by the reviewer
    let enr = in_review(&d, "minji.kim@fabrikam.test");
    let history = |d: &Daemon| d.json(&["show", &enr])["history"].as_array().map(Vec::len);
    let before = history(&d);
    let mut viewer = Client::new(&d);
    assert_eq!(viewer.sign_in(VIEWER, PW).status, 303);
    let review = viewer.get("/review");
    assert!(
        review.body.contains(&enr) && !review.body.contains("/approve\""),
        "a viewer sees no decision buttons"
    );
    let token = viewer.csrf("/review");
    let r = viewer.post(&format!("/review/{enr}/approve"), &[("csrf", &token)]);
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("reviewer"),
        "the page names the role needed: {}",
        r.body
    );
    let mut reviewer = Client::new(&d);
    assert_eq!(reviewer.sign_in(REVIEWER, PW).status, 303);
    let r = reviewer.post(&format!("/review/{enr}/approve"), &[]);
    assert_eq!(r.status, 403, "no token");
    let r = reviewer.post(&format!("/review/{enr}/approve"), &[("csrf", "forged")]);
    assert_eq!(r.status, 403, "wrong token");
    // another session's token is not this session's
    let admin_token = admin.csrf("/");
    let r = reviewer.post(&format!("/review/{enr}/approve"), &[("csrf", &admin_token)]);
    assert_eq!(r.status, 403, "another session's token");
    assert_eq!(d.state(&enr), "in_review");
    assert_eq!(history(&d), before, "nothing changed");
    let token = reviewer.csrf("/review");
    let r = reviewer.post(&format!("/review/{enr}/approve"), &[("csrf", &token)]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(d.state(&enr), "approved");
    let last = d.last_transition(&enr);
    assert_eq!(last["channel"], "console");
    assert_eq!(last["staff"], REVIEWER);
    // a reviewer cannot invite or retry (admin)
    assert_eq!(reviewer.get("/invite").status, 403);
    assert_eq!(
        reviewer
            .post("/outbox/all/retry", &[("csrf", &token)])
            .status,
        403
    );

    // sign-out ends the session: the old cookie no longer works
    let old = admin.cookie("invited_console").unwrap_or_default();
    let token = admin.csrf("/");
    assert_eq!(
        admin.post("/logout", &[]).status,
        403,
        "sign-out needs the token"
    );
    let r = admin.post("/logout", &[("csrf", &token)]);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login"));
    let mut replay = Client::new(&d);
    replay.cookies.push(("invited_console".into(), old));
    let r = replay.get("/");
    assert_eq!(r.status, 303, "a cookie from before sign-out: {}", r.body);
    assert_eq!(r.header("location"), Some("/login"));

    // removing an account ends its sessions at once
    assert_eq!(viewer.get("/").status, 200);
    d.json(&["staff", "remove", VIEWER]);
    assert_eq!(viewer.get("/").status, 303);
}

#[test]
fn throttle_listeners_export_and_no_secrets() {
    let d =
        daemon("listen = \"127.0.0.1:0\"\npublic_url = \"https://partners-admin.contoso.test\"");
    // 20 wrong passwords in a row: from the 11th on, 429 with Retry-After, also for the right one
    let mut c = Client::new(&d);
    let mut statuses = Vec::new();
    for i in 0..20 {
        let r = c.sign_in(ADMIN, &format!("wrong password {i}"));
        if r.status == 429 {
            let after: u64 = r
                .header("retry-after")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            assert!((1..=60).contains(&after), "Retry-After {after}");
        }
        statuses.push(r.status);
    }
    assert!(statuses[..10].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[10..].iter().all(|s| *s == 429), "{statuses:?}");
    let r = c.sign_in(ADMIN, PW);
    assert_eq!(r.status, 429, "held off even with the right password");
    assert!(c.cookie("invited_console").is_none());
    // another account from the same address is not held (the address allows 50)
    let mut other = Client::new(&d);
    let r = other.sign_in(REVIEWER, PW);
    assert_eq!(r.status, 303);
    let set = r
        .headers
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v.starts_with("invited_console="))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(set.contains("Secure"), "an https public URL: Secure: {set}");

    // the listeners are kept apart: no console on the public port, no links on the console's
    let console = d.console.clone().unwrap_or_default();
    assert_ne!(console, d.http);
    for path in ["/login", "/", "/review", "/export.csv"] {
        let r = crate::harness::http(&d.http, "GET", path, None);
        assert!(
            r.status == 404
                && !r.body.contains("invited console")
                && !r.body.contains("name=\"password\""),
            "public {path}: {} {}",
            r.status,
            r.body
        );
    }
    let (_, mail) = d.invite_one("a@fabrikam.test", "Fabrikam");
    let link = mail.link_path();
    for path in [
        link.as_str(),
        "/healthz",
        "/readyz",
        "/metrics",
        "/assets/style.css",
    ] {
        let r = crate::harness::http(&console, "GET", path, None);
        assert_eq!(r.status, 303, "console {path}: {}", r.body);
        let r = other.get(path);
        assert_eq!(r.status, 404, "console, signed in, {path}: {}", r.body);
    }
    let invited = d.json(&["list", "invitations"]);
    let first_id = invited[0]["id"].as_str().unwrap_or_default();
    assert_eq!(
        d.state(first_id),
        "invited",
        "the console did not open the link"
    );

    // export.csv: the bytes `invited export` writes
    let (ok, cli, err) = d.cli(&["export"]);
    assert!(ok, "{err}");
    let web = other.get("/export.csv");
    assert_eq!(web.status, 200);
    assert_eq!(web.header("content-type"), Some("text/csv; charset=utf-8"));
    assert_eq!(web.body, cli);

    // no page and no log line holds a password or a link token
    let token = link.trim_start_matches("/t/").to_string();
    assert!(token.len() > 20);
    let id = d.json(&["list", "invitations"])[0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for path in [
        "/".to_string(),
        "/records".to_string(),
        format!("/records/{id}"),
        "/review".to_string(),
        "/outbox".to_string(),
        "/inbound".to_string(),
        "/export.csv".to_string(),
    ] {
        let r = other.get(&path);
        assert_eq!(r.status, 200, "{path}");
        assert!(
            !r.body.contains(&token) && !r.body.contains(PW),
            "{path} shows a secret"
        );
    }
    let log = d.log();
    assert!(
        !log.contains(PW) && !log.contains("wrong password") && !log.contains(&token),
        "{log}"
    );
}

#[test]
fn record_actions_need_admin_confirmation_and_land_in_history() {
    let d = daemon("listen = \"127.0.0.1:0\"");
    let (id, first) = d.invite_one("b@fabrikam.test", "Fabrikam");
    let mut admin = Client::new(&d);
    assert_eq!(admin.sign_in(ADMIN, PW).status, 303);
    let page = admin.get(&format!("/records/{id}"));
    assert!(
        page.body.contains(&format!("/records/{id}/resend")),
        "{}",
        page.body
    );
    // the confirmation page, then the POST
    let confirm = admin.get(&format!("/records/{id}/resend"));
    assert_eq!(confirm.status, 200);
    let token = hidden_csrf(&confirm.body).unwrap_or_default();
    let r = admin.post(&format!("/records/{id}/resend"), &[("csrf", &token)]);
    assert_eq!(r.status, 303, "{}", r.body);
    let last = d.last_transition(&id);
    assert_eq!(last["channel"], "console");
    assert_eq!(last["staff"], ADMIN);
    // the old link is dead, the new one works
    assert_eq!(d.get(&first.link_path()).status, 404);
    let second = d
        .wait_mails("b@fabrikam.test", "", 2)
        .pop()
        .unwrap_or_else(|| panic!("resent"));
    assert_eq!(d.get(&second.link_path()).status, 200);
    // a reviewer may look, not act
    let mut reviewer = Client::new(&d);
    assert_eq!(reviewer.sign_in(REVIEWER, PW).status, 303);
    assert_eq!(reviewer.get(&format!("/records/{id}")).status, 200);
    assert_eq!(reviewer.get(&format!("/records/{id}/revoke")).status, 403);
    let token = reviewer.csrf("/records");
    assert_eq!(
        reviewer
            .post(&format!("/records/{id}/revoke"), &[("csrf", &token)])
            .status,
        403
    );
    assert_eq!(d.state(&id), "invited");
    // revoke by the admin; then resending it is refused with a page that says why
    let token = admin.csrf("/records");
    assert_eq!(
        admin
            .post(&format!("/records/{id}/revoke"), &[("csrf", &token)])
            .status,
        303
    );
    assert_eq!(d.state(&id), "revoked");
    let r = admin.post(&format!("/records/{id}/resend"), &[("csrf", &token)]);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("revoked"), "{}", r.body);
    // the records list finds it by state and by text
    let list = admin.get("/records?kind=invitations&state=revoked&q=B%40FABRIKAM");
    assert!(list.body.contains(&id), "{}", list.body);
    let list = admin.get("/records?kind=invitations&state=invited");
    assert!(!list.body.contains(&id));
    assert_eq!(
        admin.get("/records?kind=invitations&state=bogus").status,
        400
    );
}

#[test]
fn an_upload_may_be_large_other_forms_may_not() {
    let d = daemon("listen = \"127.0.0.1:0\"");
    let mut admin = Client::new(&d);
    assert_eq!(admin.sign_in(ADMIN, PW).status, 303);
    let token = admin.csrf("/invite");
    // 3,000 rows, about 140 KiB: more than any other form may send
    let mut csv = String::from("email,company,country\n");
    for i in 0..3000 {
        csv.push_str(&format!(
            "reseller{i:05}@fabrikam.test,Fabrikam Korea Branch {i:05} Ltd.,KR\n"
        ));
    }
    assert!(csv.len() > 128 * 1024);
    let boundary = "----invitedtestboundary";
    let part = |name: &str, extra: &str, value: &str| {
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{extra}\r\n\r\n{value}\r\n")
    };
    let body = format!(
        "{}{}{}--{boundary}--\r\n",
        part("csrf", "", &token),
        part("provider", "", "contoso-kr"),
        part(
            "csv",
            "; filename=\"r.csv\"\r\nContent-Type: text/csv",
            &csv
        ),
    );
    let cookie: Vec<String> = admin
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let ctype = format!("multipart/form-data; boundary={boundary}");
    let r = http_with(
        &admin.addr,
        "POST",
        "/invite",
        &[("Cookie", &cookie.join("; ")), ("Content-Type", &ctype)],
        Some(&body),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let report = admin.get(r.header("location").unwrap_or("/invite"));
    assert!(
        report.body.contains("id=\"report-queued\">3000<"),
        "{}",
        report.body.len()
    );
    assert_eq!(
        d.json(&["list", "invitations"]).as_array().map(Vec::len),
        Some(3000)
    );
    // the sign-in form with as much: refused before it is read
    let big = "x".repeat(140 * 1024);
    let mut anon = Client::new(&d);
    let t = anon.csrf("/login");
    let r = anon.post(
        "/login",
        &[("email", ADMIN), ("password", &big), ("csrf", &t)],
    );
    assert_eq!(r.status, 413);
}
