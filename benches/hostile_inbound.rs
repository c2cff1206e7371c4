//! CPU per hostile inbound message: builds messages of about `HOSTILE_BYTES` (default 10 MB) meant
//! to hit every super-linear path we know of in reading a reply, and reports the time of
//! `classify` and of the whole `App::handle_inbound` (classify, store lookups, outcome batch,
//! flush) for each. `cargo bench --bench hostile_inbound [-- CASE…]` (a CASE is part of a case's
//! name); `HOSTILE_BYTES=N` sets the size, `HOSTILE_CLASSIFY_ONLY=1` skips `handle_inbound`. The
//! goal is under 1 s each. Under `cargo test --all-targets` it runs every case once on 64 KB
//! messages, so it cannot rot. Each line: classify s, handle_inbound s, size, outcome, refs kept,
//! case [reason or diagnostic].

use std::path::Path;
use std::time::Instant;

use chrono::Utc;
use invited::app::App;

const REPLY_LOCAL: &str = "replies";

/// A 26-character base32 string made from `i` (distinct for distinct `i`), like our refs.
fn ref_of(i: usize) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut n = i as u64 ^ 0x5eed_5eed_5eed;
    (0..26)
        .map(|_| {
            let c = alphabet[(n % 32) as usize] as char;
            n = n / 32 + 7919;
            c
        })
        .collect()
}

/// `unit(i)` repeated until the text is about `size` bytes.
fn repeat(size: usize, mut unit: impl FnMut(usize) -> String) -> String {
    let mut s = String::with_capacity(size + 128);
    let mut i = 0;
    while s.len() < size {
        s.push_str(&unit(i));
        i += 1;
    }
    s
}

fn bounce_headers(id: &str) -> String {
    format!(
        "Return-Path: <>\nFrom: MAILER-DAEMON@mx.attacker.test (Mail Delivery System)\n\
         To: replies@invited.test\nSubject: Undelivered Mail Returned to Sender\n\
         Message-ID: <{id}@mx.attacker.test>\nMIME-Version: 1.0\n"
    )
}

fn reply_headers(id: &str) -> String {
    format!(
        "From: Eve <eve@attacker.test>\nTo: replies+{}@invited.test\nSubject: Re: hi\n\
         Message-ID: <{id}@attacker.test>\nMIME-Version: 1.0\n",
        ref_of(0)
    )
}

/// (name, message) for every case, each about `size` bytes.
fn cases(size: usize) -> Vec<(&'static str, Vec<u8>)> {
    let mut v: Vec<(&'static str, String)> = Vec::new();
    v.push((
        "bounce body: `replies+` repeated, one @ at the end",
        format!(
            "{}Content-Type: text/plain\n\n{}@x.test\n",
            bounce_headers("plus-at-end"),
            repeat(size, |_| "replies+".into())
        ),
    ));
    v.push((
        "bounce body: `replies+` repeated, no @",
        format!(
            "{}Content-Type: text/plain\n\n{}\n",
            bounce_headers("plus-no-at"),
            repeat(size, |_| "replies+".into())
        ),
    ));
    v.push((
        "bounce body: distinct replies+<ref>@ addresses",
        format!(
            "{}Content-Type: text/plain\n\n{}\n",
            bounce_headers("plus-refs"),
            repeat(size, |i| format!("replies+{}@invited.test\n", ref_of(i)))
        ),
    ));
    v.push((
        "bounce body: distinct <ref@host> ids",
        format!(
            "{}Content-Type: text/plain\n\n{}\n",
            bounce_headers("bounce-ids"),
            repeat(size, |i| format!("<{}@h.test> ", ref_of(i)))
        ),
    ));
    v.push((
        "To header: `replies+` repeated, no @",
        format!(
            "From: eve@attacker.test\nTo: {}\nSubject: hi\nMessage-ID: <to-plus@attacker.test>\n\nYes\n",
            repeat(size, |_| "replies+".into())
        ),
    ));
    v.push((
        "References: distinct ids, folded",
        format!(
            "{}References:{}\nIn-Reply-To: <{}@invited.test>\n\nYes\n",
            reply_headers("references"),
            repeat(size, |i| format!("\n <{}@invited.test>", ref_of(i))),
            ref_of(1)
        ),
    ));
    v.push((
        "many headers",
        format!(
            "{}{}\nYes\n",
            reply_headers("headers"),
            repeat(size, |i| format!("X-Header-{i}: value {i}\n"))
        ),
    ));
    v.push((
        "many Received headers",
        format!(
            "{}{}\nYes\n",
            reply_headers("received"),
            repeat(size, |i| format!(
                "Received: from h{i}.test (h{i}.test [192.0.2.1]) by mx.test with ESMTP id {i}; Tue, 24 Nov 2026 05:00:00 +0000\n"
            ))
        ),
    ));
    v.push((
        "From: one header, many mailboxes",
        format!(
            "From: {}\nTo: replies+{}@invited.test\nMessage-ID: <from-list@attacker.test>\n\nYes\n",
            repeat(size, |i| format!("u{i}@attacker.test, ")),
            ref_of(0)
        ),
    ));
    v.push((
        "Subject: many encoded words",
        format!(
            "From: eve@attacker.test\nTo: replies+{}@invited.test\nMessage-ID: <subject@attacker.test>\nSubject:{}\n\nYes\n",
            ref_of(0),
            repeat(size, |_| " =?utf-8?b?7JiIIOuEpA==?=\n".into())
        ),
    ));
    v.push((
        "HTML body: many tags and entities",
        format!(
            "{}Content-Type: text/html; charset=utf-8\n\n<p>{}</p>\n",
            reply_headers("html"),
            repeat(size, |_| "<b>&amp;</b><i>&#33;&nbsp;&x</i><br>".into())
        ),
    ));
    v.push((
        "HTML body: many unclosed tags and ampersands",
        format!(
            "{}Content-Type: text/html; charset=utf-8\n\n{}\n",
            reply_headers("html-open"),
            repeat(size, |_| "<a &<b &&".into())
        ),
    ));
    v.push((
        "HTML in a bounce: many <blockquote> and <hr>",
        format!(
            "{}Content-Type: text/html; charset=utf-8\n\n{}\n",
            bounce_headers("html-bounce"),
            repeat(size, |_| "<blockquote><hr>550 x</blockquote>".into())
        ),
    ));
    v.push((
        "text body: one long line",
        format!(
            "{}Content-Type: text/plain\n\n{}\n",
            reply_headers("long-line"),
            repeat(size, |_| "a".repeat(1000))
        ),
    ));
    v.push((
        "text body: many short lines, no keyword",
        format!(
            "{}Content-Type: text/plain\n\n{}\n",
            reply_headers("lines"),
            repeat(size, |_| "> q\n".into())
        ),
    ));
    v.push((
        "quoted-printable body: soft line breaks",
        format!(
            "{}Content-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\n{}\n",
            reply_headers("qp"),
            repeat(size, |_| "=\n".into())
        ),
    ));
    v.push((
        "MIME: many text parts",
        format!(
            "{}Content-Type: multipart/mixed; boundary=b\n\n{}--b--\n",
            reply_headers("parts"),
            repeat(size, |_| "--b\nContent-Type: text/plain\n\nx\n".into())
        ),
    ));
    v.push(("MIME: deep multipart nesting", {
        let open = repeat(size / 2, |i| {
            format!(
                "--b{i}\nContent-Type: multipart/mixed; boundary=\"b{}\"\n\n",
                i + 1
            )
        });
        format!(
            "{}Content-Type: multipart/mixed; boundary=\"b0\"\n\n{open}--end\n\nYes\n",
            reply_headers("deep")
        )
    }));
    v.push((
        "MIME: many parts whose boundary never comes",
        format!(
            "{}Content-Type: multipart/mixed; boundary=b\n\n{}--b--\n",
            reply_headers("missing-boundaries"),
            repeat(size, |i| format!(
                "--b\nContent-Type: multipart/mixed; boundary=\"never-{i}\"\n\nx\n"
            ))
        ),
    ));
    v.push((
        "MIME: 30 parts whose boundary never comes, then the bulk",
        format!(
            "{}Content-Type: multipart/mixed; boundary=b\n\n{}--b\nContent-Type: text/plain\n\n{}\n--b--\n",
            reply_headers("missing-boundaries-30"),
            (0..30)
                .map(|i| format!("--b\nContent-Type: multipart/mixed; boundary=\"never-{i}\"\n\nx\n"))
                .collect::<String>(),
            repeat(size, |_| "-- x --\n".into())
        ),
    ));
    v.push((
        "MIME: 30 nested multiparts, dashes inside",
        {
            let open: String = (0..30)
                .map(|i| format!("--b{i}\nContent-Type: multipart/mixed; boundary=\"b{}\"\n\n", i + 1))
                .collect();
            format!(
                "{}Content-Type: multipart/mixed; boundary=\"b0\"\n\n{open}--b30\nContent-Type: text/plain\n\n{}\n",
                reply_headers("deep-30"),
                repeat(size, |_| "-".repeat(100) + "\n")
            )
        },
    ));
    v.push((
        "MIME: one long boundary, a body of dashes",
        format!(
            "{}Content-Type: multipart/mixed; boundary=\"{}x\"\n\n{}\n",
            reply_headers("long-boundary"),
            "-".repeat(size / 100),
            "-".repeat(size)
        ),
    ));
    v.push(("MIME: nested message/rfc822", {
        let open = repeat(size / 2, |_| {
            "Content-Type: message/rfc822\n\nFrom: a@b.test\nSubject: x\n".to_string()
        });
        format!("{}{open}\nYes\n", reply_headers("nested-message"))
    }));
    v.push((
        "DSN: many per-recipient blocks",
        format!(
            "{}Content-Type: multipart/report; report-type=delivery-status; boundary=b\n\n\
             --b\nContent-Type: text/plain\n\nfailed\n--b\nContent-Type: message/delivery-status\n\n\
             Reporting-MTA: dns; mx.attacker.test\n\n{}--b--\n",
            bounce_headers("dsn-blocks"),
            repeat(size, |i| format!(
                "Final-Recipient: rfc822; u{i}@attacker.test\nAction: failed\nStatus: 5.1.1\n\n"
            ))
        ),
    ));
    v.into_iter().map(|(n, m)| (n, m.into_bytes())).collect()
}

fn app(dir: &Path) -> App {
    let text = format!(
        r#"
[store]
path = "store"
[http]
listen = "127.0.0.1:0"
public_url = "http://links.invited.test"
[admin]
socket = "admin.sock"
[keys]
active = "k1"
files = {{ k1 = "keys/k1.key" }}
[mail]
from = "Contoso Distribution <partners@invited.test>"
reply_to = "{REPLY_LOCAL}@invited.test"
default_locale = "en-US"
[mail.outbound]
transport = "file"
dir = "outbox"
[mail.inbound]
source = "maildir"
dir = "inbox"
trusted_authserv_id = "mx.invited.test"
[[providers]]
id = "contoso-kr"
name = "Contoso Distribution Korea"
email = "ops@contoso.test"
markets = ["KR"]
"#
    );
    let path = dir.join("invited.toml");
    std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    let cfg = invited::config::Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    let shared = invited::daemon::load_shared(cfg.clone()).unwrap_or_else(|e| panic!("{e}"));
    let store = invited::store::Store::open_sled(&cfg.store_path, 64_000_000)
        .unwrap_or_else(|e| panic!("{e}"));
    App::new(store, shared)
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test --all-targets` this only checks that it runs
    let bench = std::env::args().any(|a| a == "--bench");
    let size = std::env::var("HOSTILE_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if bench { 10_000_000 } else { 64_000 });
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let whole_path = std::env::var("HOSTILE_CLASSIFY_ONLY").is_err();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let app = app(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    println!("message size about {size} bytes; classify and handle_inbound in seconds");
    for (name, raw) in cases(size) {
        if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        let t = Instant::now();
        let inbound = invited::classify::classify(&raw, REPLY_LOCAL);
        let classify = t.elapsed().as_secs_f64();
        let (outcome, why) = match &inbound.classification {
            invited::classify::Classification::Bounce { diagnostic, .. } => ("bounce", diagnostic),
            invited::classify::Classification::AutoReply { reason } => ("auto_reply", reason),
            invited::classify::Classification::Command { .. } => ("command", &String::new()),
            invited::classify::Classification::Unrecognised { reason } => ("unrecognised", reason),
        };
        let why: String = why.chars().take(48).collect();
        let whole = if whole_path {
            let t = Instant::now();
            let r = rt
                .block_on(app.handle_inbound(&raw, Utc::now()))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(r.is_some(), "{name}: handled once");
            format!("{:8.3}", t.elapsed().as_secs_f64())
        } else {
            "       -".into()
        };
        println!(
            "{classify:8.3} {whole} {:>10} B {outcome:>12} {:>4} refs  {name}  [{why}]",
            raw.len(),
            inbound.refs.len()
        );
    }
}
