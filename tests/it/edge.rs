//! The public edge answers uniformly: `/metrics` is not on it (it is on the admin socket, the
//! admin TCP listener behind its token, and `[http] metrics_listen`), and a malformed `/t/…`, an
//! unknown path and an over-long URI get the same generic page and security headers as any
//! invalid link.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::harness::{http, Daemon, Options, Response};

/// `GET path` over the admin Unix socket: (status, body).
pub fn admin_socket_get(d: &Daemon, path: &str) -> (u16, String) {
    let mut s = UnixStream::connect(d.admin_socket()).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: invited\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// Raw bytes to `addr`, everything the server answers until it closes.
fn raw(addr: &str, req: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    s.write_all(req).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn assert_generic(r: &Response, generic: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: status");
    assert_eq!(
        r.body, generic.body,
        "{what}: the generic invalid-link page"
    );
    for (h, want) in [
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("content-type", "text/html; charset=utf-8"),
    ] {
        assert_eq!(r.header(h), Some(want), "{what}: {h}");
    }
    assert!(
        r.header("content-security-policy").is_some_and(
            |c| c.contains("default-src 'none'") && c.contains("frame-ancestors 'none'")
        ),
        "{what}: content-security-policy"
    );
}

#[test]
fn metrics_are_served_off_the_public_listener_only() {
    let secrets = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let token_file = secrets.path().join("admin.token");
    let token = "0123456789abcdef0123456789abcdef";
    std::fs::write(&token_file, token).unwrap_or_else(|e| panic!("{e}"));
    let d = Daemon::start(Options {
        http_extra: "metrics_listen = \"127.0.0.1:0\"".into(),
        admin_extra: format!(
            "listen = \"127.0.0.1:0\"\ntoken_file = \"{}\"",
            token_file.display()
        ),
        ..Options::default()
    });
    d.invite_one("metrics@fabrikam.test", "Fabrikam");
    let generic = d.get("/t/not-a-token");

    // public: not there, and indistinguishable from any unknown path or invalid link
    assert_generic(&d.get("/metrics"), &generic, 404, "public /metrics");
    assert_generic(
        &d.get("/no/such/page"),
        &generic,
        404,
        "public unknown path",
    );

    // the admin socket
    let (status, body) = admin_socket_get(&d, "/metrics");
    assert_eq!(status, 200, "admin socket /metrics: {body}");
    assert!(body.contains("invited_sent_total"), "{body}");
    assert!(
        body.contains(
            "invited_transitions_total{kind=\"provider_authorization\",to=\"invited\"} 1"
        ),
        "{body}"
    );
    assert!(
        body.contains("invited_http_connection_limit{listener=\"public\"} 512"),
        "the public cap is reported: {body}"
    );

    // metrics_listen: /metrics and nothing else
    let m = d
        .metrics
        .clone()
        .unwrap_or_else(|| panic!("metrics_listen address"));
    let r = http(&m, "GET", "/metrics", None);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    assert!(r.body.contains("invited_outbox_depth"), "{}", r.body);
    for path in ["/healthz", "/v1/status", "/t/not-a-token"] {
        assert_eq!(
            http(&m, "GET", path, None).status,
            404,
            "metrics_listen {path}"
        );
    }

    // the admin TCP listener: behind its bearer token
    let a = d
        .admin_http
        .clone()
        .unwrap_or_else(|| panic!("admin.listen address"));
    assert_eq!(http(&a, "GET", "/metrics", None).status, 401);
    let with_token = raw(
        &a,
        format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert!(with_token.starts_with("HTTP/1.1 200"), "{with_token}");
    assert!(with_token.contains("invited_outbox_depth"), "{with_token}");
}

#[test]
fn malformed_and_overlong_links_get_the_generic_page() {
    let d = Daemon::start(Options::default());
    let generic = d.get("/t/not-a-token");
    assert_generic(&generic, &generic, 404, "an invalid token");

    // a token that does not percent-decode to UTF-8
    assert_generic(&d.get("/t/%ff%fe"), &generic, 404, "GET /t/%ff%fe");
    assert_generic(
        &d.post("/t/%ff%fe", &[("action", "decline")]),
        &generic,
        404,
        "POST /t/%ff%fe",
    );
    // a token with a slash, an empty token
    assert_generic(&d.get("/t/a/b"), &generic, 404, "/t/a/b");
    assert_generic(&d.get("/t/"), &generic, 404, "/t/");
    // a body that is not a form, for an invalid token: still the generic page (was 415)
    let r = raw(
        &d.http,
        b"POST /t/not-a-token HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    assert!(r.ends_with(&generic.body), "{r}");

    // over-long URIs: our 414, with the generic page and the security headers
    let long_token = format!("/t/{}", "A".repeat(9 * 1024));
    assert_generic(&d.get(&long_token), &generic, 414, "a 9 KiB token");
    assert_generic(
        &d.post(&long_token, &[("action", "decline")]),
        &generic,
        414,
        "POST a 9 KiB token",
    );
    let long_query = format!("/t/not-a-token?lang={}", "x".repeat(20 * 1024));
    assert_generic(&d.get(&long_query), &generic, 414, "a 20 KiB query");
    // just under the limit is an ordinary invalid link
    let under = format!("/t/{}", "A".repeat(8 * 1024 - 3));
    assert_generic(&d.get(&under), &generic, 404, "an 8 KiB token");

    // What remains (documented in ARCHITECTURE.md): a head longer than hyper's head buffer
    // (32 KiB) is answered by hyper itself with a bare 431, before any of our code runs.
    let mut head = b"GET /t/".to_vec();
    head.resize(32 * 1024, b'A');
    let r = raw(&d.http, &head);
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
}
