//! OAuth2 logins against the real Dovecot of `scripts/mailstack --oauth2`: the test serves the
//! token endpoint (client credentials, JWT bearer with the signature checked) and the RFC 7662
//! introspection endpoint Dovecot asks, on a loopback port-0 listener, and can expire or revoke
//! what it issued.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::harness::{wait_for, Daemon};
use crate::mailstack::{reply_raw, wait_inbox, MailStack};

const INBOX: &str = "replies@invited.test";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
const CLIENT_SECRET: &str = "cs~SECRET-never-logged-7Qx";
const SA_EMAIL: &str = "invited@test-project.iam.gserviceaccount.com";
const RSA_PKCS8: &str = include_str!("../data/dkim/rsa2048-pkcs8.pem");

#[derive(Default)]
struct State {
    /// token -> (user, valid until)
    tokens: HashMap<String, (String, Instant)>,
    /// every introspection says `active: false`
    revoked: bool,
    /// what `expires_in` says; and how long the token really stays valid
    expires_in: u64,
    valid_for: Duration,
    grants: Vec<&'static str>,
    next: u64,
}

struct TokenServer {
    url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    fn start() -> TokenServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "http://{}",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let state = Arc::new(Mutex::new(State {
            expires_in: 3600,
            valid_for: Duration::from_secs(3600),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let public_key = invited::oauth::ServiceAccountKey::parse(&key_json("http://x/token"))
            .unwrap_or_else(|e| panic!("{e}"))
            .public_key_der();
        let (st, sp, token_url) = (state.clone(), stop.clone(), format!("{url}/token"));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    serve(c, &st, &public_key, &token_url);
                }
            }
        });
        TokenServer {
            url,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn issue(&self, user: &str) -> String {
        self.with(|s| issue(s, user))
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn issue(s: &mut State, user: &str) -> String {
    s.next += 1;
    let token = format!("at-{}-{:x}", s.next, rand_u64());
    s.tokens.insert(
        token.clone(),
        (user.to_string(), Instant::now() + s.valid_for),
    );
    token
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

fn form_decode(s: &str) -> HashMap<String, String> {
    let dec = |v: &str| {
        let b = v.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                if let Ok(x) = u8::from_str_radix(h, 16) {
                    out.push(x);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).to_string()
    };
    s.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (dec(k), dec(v)))
        .collect()
}

/// One request per connection (we answer `Connection: close`).
fn serve(mut c: TcpStream, state: &Mutex<State>, public_key: &[u8], token_url: &str) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let form = form_decode(&String::from_utf8_lossy(&buf[head_end..head_end + len]));
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    let (status, body) = match path.as_str() {
        "/introspect" => {
            let now = Instant::now();
            let active = form
                .get("token")
                .and_then(|t| s.tokens.get(t))
                .filter(|(_, until)| *until > now && !s.revoked);
            match active {
                Some((user, _)) => (200, serde_json::json!({"active": true, "username": user})),
                None => (200, serde_json::json!({"active": false})),
            }
        }
        "/token" => match form.get("grant_type").map(String::as_str) {
            Some("client_credentials") => {
                if form.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                    && form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET)
                    && form.get("scope").map(String::as_str)
                        == Some("https://outlook.office365.com/.default")
                {
                    s.grants.push("client_credentials");
                    let t = issue(&mut s, INBOX);
                    (
                        200,
                        serde_json::json!({"token_type": "Bearer", "access_token": t, "expires_in": s.expires_in}),
                    )
                } else {
                    (
                        401,
                        serde_json::json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
                    )
                }
            }
            Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
                match check_jwt(
                    form.get("assertion").map(String::as_str).unwrap_or(""),
                    public_key,
                    token_url,
                ) {
                    Ok(sub) => {
                        s.grants.push("jwt_bearer");
                        let t = issue(&mut s, &sub);
                        (
                            200,
                            serde_json::json!({"token_type": "Bearer", "access_token": t, "expires_in": s.expires_in}),
                        )
                    }
                    Err(why) => (
                        400,
                        serde_json::json!({"error": "invalid_grant", "error_description": why}),
                    ),
                }
            }
            _ => (400, serde_json::json!({"error": "unsupported_grant_type"})),
        },
        _ => (404, serde_json::json!({})),
    };
    drop(s);
    let body = body.to_string();
    let _ = write!(
        c,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Checks an RS256 assertion as Google would: signature, `iss`, `aud`, `exp`; returns `sub`.
fn check_jwt(jwt: &str, public_key: &[u8], token_url: &str) -> Result<String, String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts[..] else {
        return Err("not a JWT".into());
    };
    let d = |p: &str| {
        data_encoding::BASE64URL_NOPAD
            .decode(p.as_bytes())
            .map_err(|e| e.to_string())
    };
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    )
    .verify(format!("{h}.{c}").as_bytes(), &d(sig)?)
    .map_err(|_| "Invalid JWT Signature.".to_string())?;
    let header: serde_json::Value = serde_json::from_slice(&d(h)?).map_err(|e| e.to_string())?;
    let claims: serde_json::Value = serde_json::from_slice(&d(c)?).map_err(|e| e.to_string())?;
    let now = chrono::Utc::now().timestamp();
    if header["alg"] != "RS256" || claims["iss"] != SA_EMAIL || claims["aud"] != token_url {
        return Err(format!("bad alg/iss/aud: {header} {claims}"));
    }
    if claims["scope"] != "https://mail.google.com/" || claims["sub"] != INBOX {
        return Err("bad scope or sub".into());
    }
    let exp = claims["exp"].as_i64().unwrap_or(0);
    if exp <= now || exp > now + 3700 {
        return Err("Invalid JWT: exp".into());
    }
    Ok(INBOX.to_string())
}

fn key_json(token_uri: &str) -> Vec<u8> {
    serde_json::json!({
        "type": "service_account",
        "client_email": SA_EMAIL,
        "private_key": RSA_PKCS8,
        "private_key_id": "0123",
        "token_uri": token_uri,
    })
    .to_string()
    .into_bytes()
}

/// A daemon reading the INBOX over IMAPS with `auth = "oauth2"` and this `[mail.inbound.oauth2]`.
fn daemon(ms: &MailStack, mechanism: &str, oauth2: &str) -> Daemon {
    let mut o = ms.options(true);
    o.inbound = Some(format!(
        "source = \"imap\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"tls\"\nca_file = \"{}\"\nusername = \"{INBOX}\"\nauth = \"oauth2\"\nmechanism = \"{mechanism}\"\nidle = true\npoll_interval = \"300ms\"",
        ms.port("IMAPS_PORT"),
        ms.var("CA_CERT"),
    ));
    let mut d = Daemon::new(o);
    // the table goes after everything: the harness puts more [mail.inbound] keys after ours
    let mut text = std::fs::read_to_string(&d.config).unwrap_or_default();
    text.push_str(&format!("\n[mail.inbound.oauth2]\n{oauth2}\n"));
    std::fs::write(&d.config, text).unwrap_or_else(|e| panic!("{e}"));
    d.env = vec![("INVITED_LOG".into(), "trace".into())];
    d.spawn();
    d
}

fn client_credentials(ts: &TokenServer, d: &std::path::Path) -> String {
    let secret = d.join("client-secret");
    std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap_or_else(|e| panic!("{e}"));
    format!(
        "source = \"client_credentials\"\ntoken_url = \"{}/token\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\nscope = \"https://outlook.office365.com/.default\"",
        ts.url,
        secret.display()
    )
}

/// Invites `user`, answers the invitation by SMTP, waits for the daemon to read it over IMAP.
fn reply_is_read(ms: &MailStack, d: &Daemon, user: &str, n: usize) {
    let r = d.invite(user, "Tailspin");
    let id = r["id"].as_str().unwrap_or_default().to_string();
    let m = &wait_inbox(ms, user, 1)[0];
    ms.send(
        user,
        &m.reply_to,
        &reply_raw(
            user,
            m,
            &format!("oauth-reply-{n}@tailspin.test"),
            "DECLINE, thank you",
            false,
        ),
    );
    d.wait_state(&id, "declined");
}

fn kick(ms: &MailStack) {
    let out = Command::new("doveadm")
        .arg("-c")
        .arg(ms.var("DOVECOT_CONFIG"))
        .arg("kick")
        .arg(INBOX)
        .output();
    assert!(out.is_ok_and(|o| o.status.success()), "doveadm kick");
}

/// The trace log names no token the server issued, no client secret, no private key.
fn log_is_clean(d: &Daemon, ts: &TokenServer) {
    let log = d.log();
    assert!(
        log.contains("OAuth2 token"),
        "the log is the daemon's: {log}"
    );
    assert!(!log.contains(CLIENT_SECRET), "client secret in the log");
    assert!(
        !log.contains("PRIVATE KEY")
            && !log.contains(&RSA_PKCS8.lines().nth(1).unwrap_or("-")[..40]),
        "private key in the log"
    );
    assert!(
        !log.contains("auth=Bearer") && !log.contains("eyJ"),
        "a SASL string or a JWT in the log"
    );
    ts.with(|s| {
        for t in s.tokens.keys() {
            assert!(!log.contains(t.as_str()), "token {t} in the log");
        }
    });
}

#[test]
fn replies_are_read_with_each_token_source() {
    let users: Vec<String> = (0..4).map(|i| format!("t{i}@tailspin.test")).collect();
    let ts = TokenServer::start();
    let ms = MailStack::start_with(&users, &["--oauth2", &ts.url]);
    let files = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));

    // static: a token another tool put in a file
    let token_file = files.path().join("token");
    std::fs::write(&token_file, ts.issue(INBOX) + "\n").unwrap_or_else(|e| panic!("{e}"));
    let mut d = daemon(
        &ms,
        "xoauth2",
        &format!(
            "source = \"static\"\ntoken_file = \"{}\"",
            token_file.display()
        ),
    );
    reply_is_read(&ms, &d, &users[0], 0);
    log_is_clean(&d, &ts);
    d.stop();

    // client credentials (Entra's shape)
    let mut d = daemon(&ms, "xoauth2", &client_credentials(&ts, files.path()));
    reply_is_read(&ms, &d, &users[1], 1);
    assert!(ts.with(|s| s.grants.contains(&"client_credentials")));
    log_is_clean(&d, &ts);
    d.stop();

    // JWT bearer (a Google service account); the token URL comes from the key file
    let key_file = files.path().join("sa.json");
    std::fs::write(&key_file, key_json(&format!("{}/token", ts.url)))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut d = daemon(&ms, "xoauth2", &format!("source = \"jwt_bearer\"\nkey_file = \"{}\"\nsubject = \"{INBOX}\"\nscope = \"https://mail.google.com/\"", key_file.display()));
    reply_is_read(&ms, &d, &users[2], 2);
    assert!(ts.with(|s| s.grants.contains(&"jwt_bearer")));
    log_is_clean(&d, &ts);
    d.stop();

    // OAUTHBEARER (RFC 7628) with client credentials
    let d = daemon(&ms, "oauthbearer", &client_credentials(&ts, files.path()));
    reply_is_read(&ms, &d, &users[3], 3);
    log_is_clean(&d, &ts);
}

#[test]
fn expired_refused_and_revoked_tokens() {
    let users: Vec<String> = (0..4).map(|i| format!("x{i}@tailspin.test")).collect();
    let ts = TokenServer::start();
    // honest short tokens: 2 s, said and meant
    ts.with(|s| {
        s.expires_in = 2;
        s.valid_for = Duration::from_secs(2);
    });
    let ms = MailStack::start_with(&users, &["--oauth2", &ts.url]);
    let files = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = daemon(&ms, "xoauth2", &client_credentials(&ts, files.path()));
    reply_is_read(&ms, &d, &users[0], 0);
    let grants = ts.with(|s| s.grants.len());

    // 1. the token expires while the session runs; the next login fetches a new one first
    std::thread::sleep(Duration::from_millis(2500));
    kick(&ms);
    reply_is_read(&ms, &d, &users[1], 1);
    assert!(
        ts.with(|s| s.grants.len()) > grants,
        "a new token after expiry"
    );
    assert!(
        !d.log().contains("refused the OAuth2 token"),
        "expiry is seen before the server refuses: {}",
        d.log()
    );

    // 2. the server stops honouring a token the daemon still thinks good: refused, refreshed once, retried
    ts.with(|s| {
        s.expires_in = 3600;
        s.valid_for = Duration::from_secs(3600);
    });
    // the cached 2 s token lapses, so the next login fetches a long-lived one
    std::thread::sleep(Duration::from_millis(2500));
    kick(&ms);
    wait_for(
        "a login with a long-lived token",
        Duration::from_secs(20),
        || {
            ts.with(|s| {
                s.tokens
                    .values()
                    .any(|(_, until)| *until > Instant::now() + Duration::from_secs(60))
            })
            .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    ts.with(|s| {
        s.tokens
            .values_mut()
            .for_each(|(_, until)| *until = Instant::now())
    });
    kick(&ms);
    reply_is_read(&ms, &d, &users[2], 2);
    let log = d.log();
    assert!(
        log.contains("IMAP refused the OAuth2 token; fetching a new token and retrying once"),
        "{log}"
    );
    assert!(
        log.contains("AUTHENTICATIONFAILED"),
        "the server's answer is logged: {log}"
    );

    // 3. revoked: every login refused even with a new token -> a clear line, backoff, no crash
    ts.with(|s| s.revoked = true);
    kick(&ms);
    let again = "IMAP refused the OAuth2 login as replies@invited.test again with a new token; server answer:";
    wait_for("two refused reconnects", Duration::from_secs(30), || {
        (d.log().matches(again).count() >= 2).then_some(())
    });
    assert!(
        d.pid().is_some() && d.get("/healthz").status == 200,
        "the daemon keeps running"
    );
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains(again))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("AUTHENTICATIONFAILED") && line.contains("retry_in_ms"),
        "{line}"
    );
    // the backoff grows between attempts
    let delays: Vec<u64> = log
        .lines()
        .filter(|l| l.contains(again))
        .filter_map(|l| {
            l.split("retry_in_ms")
                .nth(1)?
                .trim_start_matches(['=', '"', ':', ' '])
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(delays.len() >= 2 && delays[1] > delays[0], "{delays:?}");

    // 4. access given back: work continues, nothing lost
    ts.with(|s| s.revoked = false);
    reply_is_read(&ms, &d, &users[3], 3);
    log_is_clean(&d, &ts);
}

/// A daemon sending through Dovecot's own submission service (dovecot-submissiond, which relays
/// to Postfix) with `auth = "oauth2"`, one message per connection so every message logs in.
fn sending_daemon(ms: &MailStack, mechanism: &str, oauth2: &str) -> Daemon {
    let mut o = ms.options(true);
    o.outbound = Some(format!(
        "transport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nca_file = \"{}\"\nusername = \"{INBOX}\"\nauth = \"oauth2\"\nmechanism = \"{mechanism}\"\nconcurrency = 2\nmax_messages_per_connection = 1",
        ms.port("DOVECOT_SUBMISSION_PORT"),
        ms.var("CA_CERT"),
    ));
    o.inbound = None;
    let mut d = Daemon::new(o);
    let mut text = std::fs::read_to_string(&d.config).unwrap_or_default();
    text.push_str(&format!("\n[mail.outbound.oauth2]\n{oauth2}\n"));
    std::fs::write(&d.config, text).unwrap_or_else(|e| panic!("{e}"));
    d.env = vec![("INVITED_LOG".into(), "trace".into())];
    d.spawn();
    d
}

/// How many SMTP logins Dovecot's submission took with `method`.
fn submission_logins(ms: &MailStack, method: &str) -> usize {
    let log = std::fs::read_to_string(ms.var("DOVECOT_LOG")).unwrap_or_default();
    log.lines()
        .filter(|l| {
            l.contains("submission-login: Info: Login:")
                && l.contains(&format!("user=<{INBOX}>"))
                && l.contains(&format!("method={method}"))
        })
        .count()
}

fn outbox_item_to(d: &Daemon, to: &str) -> serde_json::Value {
    d.json(&["outbox"])
        .as_array()
        .and_then(|a| a.iter().find(|i| i["to"].as_str() == Some(to)).cloned())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn sends_through_submission_with_oauth2() {
    let users: Vec<String> = (0..6).map(|i| format!("s{i}@tailspin.test")).collect();
    let ts = TokenServer::start();
    // honest short tokens: 2 s, said and meant
    ts.with(|s| {
        s.expires_in = 2;
        s.valid_for = Duration::from_secs(2);
    });
    let ms = MailStack::start_with(&users, &["--oauth2", &ts.url]);
    let files = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = sending_daemon(&ms, "xoauth2", &client_credentials(&ts, files.path()));

    // 1. XOAUTH2 with a client-credentials token: the invitation arrives
    d.invite(&users[0], "Tailspin");
    let m = &wait_inbox(&ms, &users[0], 1)[0];
    assert!(m.text.contains("Tailspin"), "{}", m.text);
    assert!(
        submission_logins(&ms, "XOAUTH2") >= 1,
        "Dovecot took an XOAUTH2 login: {}",
        std::fs::read_to_string(ms.var("DOVECOT_LOG")).unwrap_or_default()
    );
    assert!(ts.with(|s| s.grants.contains(&"client_credentials")));

    // 2. the token expires between messages: the next login fetches a new one first
    let grants = ts.with(|s| s.grants.len());
    std::thread::sleep(Duration::from_millis(2500));
    d.invite(&users[1], "Tailspin");
    wait_inbox(&ms, &users[1], 1);
    assert!(
        ts.with(|s| s.grants.len()) > grants,
        "a new token after expiry"
    );
    assert!(
        !d.log().contains("SMTP refused the OAuth2 token"),
        "expiry is seen before the server refuses: {}",
        d.log()
    );

    // 3. the server stops honouring a token the daemon still thinks good: refused, a new
    // token, the login retried once, the message delivered
    ts.with(|s| {
        s.expires_in = 3600;
        s.valid_for = Duration::from_secs(3600);
    });
    std::thread::sleep(Duration::from_millis(2500));
    d.invite(&users[2], "Tailspin");
    wait_inbox(&ms, &users[2], 1);
    ts.with(|s| {
        s.tokens
            .values_mut()
            .for_each(|(_, until)| *until = Instant::now())
    });
    d.invite(&users[3], "Tailspin");
    wait_inbox(&ms, &users[3], 1);
    let log = d.log();
    assert!(
        log.contains("SMTP refused the OAuth2 token; fetching a new token and retrying once"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("SMTP refused the OAuth2 token") && l.contains("535")),
        "the server's answer is logged: {log}"
    );

    // 4. revoked: refused even with a new token -> a clear line with the server's answer, the
    // message stays queued (never undeliverable), backoff, no crash
    ts.with(|s| s.revoked = true);
    let r = d.invite(&users[4], "Tailspin");
    let id = r["id"].as_str().unwrap_or_default().to_string();
    let again = "refused again with a new OAuth2 token for replies@invited.test";
    wait_for("a refused send", Duration::from_secs(30), || {
        d.log().contains(again).then_some(())
    });
    let line = d
        .log()
        .lines()
        .find(|l| l.contains(again))
        .unwrap_or_default()
        .to_string();
    assert!(line.contains("535") && line.contains("AUTH"), "{line}");
    let item = outbox_item_to(&d, &users[4]);
    assert_eq!(item["state"], "queued", "{item}");
    assert!(
        item["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("transport:")),
        "{item}"
    );
    assert_ne!(d.state(&id), "undeliverable");
    assert!(
        d.pid().is_some() && d.get("/healthz").status == 200,
        "the daemon keeps running"
    );
    let summary = d.json(&["outbox", "--summary"]);
    assert!(summary["queued"].as_u64().unwrap_or(0) >= 1, "{summary}");
    assert!(
        summary["waiting_on_transport"].as_u64().unwrap_or(0) >= 1
            && summary["transport_error"]
                .as_str()
                .is_some_and(|e| e.contains("535")),
        "outbox --summary says the mail server is the problem: {summary}"
    );
    let (_, text, _) = d.cli(&["outbox", "--summary"]);
    assert!(text.contains("wait on the mail server"), "{text}");

    // 5. access given back: the queued message goes out, nothing lost
    ts.with(|s| s.revoked = false);
    wait_inbox(&ms, &users[4], 1);
    wait_for("the outbox item sent", Duration::from_secs(60), || {
        (outbox_item_to(&d, &users[4])["state"] == "sent").then_some(())
    });
    log_is_clean(&d, &ts);
    drop(d);

    // OAUTHBEARER (RFC 7628) on submission, with a static token file
    let token_file = files.path().join("token");
    std::fs::write(&token_file, ts.issue(INBOX) + "\n").unwrap_or_else(|e| panic!("{e}"));
    let d = sending_daemon(
        &ms,
        "oauthbearer",
        &format!(
            "source = \"static\"\ntoken_file = \"{}\"",
            token_file.display()
        ),
    );
    d.invite(&users[5], "Tailspin");
    wait_inbox(&ms, &users[5], 1);
    assert!(submission_logins(&ms, "OAUTHBEARER") >= 1);
    log_is_clean(&d, &ts);
}
