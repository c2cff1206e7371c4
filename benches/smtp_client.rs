//! The SMTP client alone: N ready-made messages (one invitation as the daemon builds it) through
//! `SmtpPool` at a given concurrency, without rendering or the store. `bench/smtp-throughput`
//! runs it into smtp-sink beside smtp-source:
//!
//!   SMTP_BENCH_PORT=PORT [SMTP_BENCH_N=20000] [SMTP_BENCH_C=4] cargo bench --bench smtp_client
//!
//! Without SMTP_BENCH_PORT (as under `cargo test --all-targets`) it sends 50 messages to a small
//! in-process sink and checks that all arrived.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use invited::model::{Email, Purpose, RecordId};
use invited::outbox::{LinkSpec, MailFieldsV1, MailKind, OutboxItem, Sender};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn invitation() -> Vec<u8> {
    let templates = invited::templates::Templates::load(None).unwrap_or_else(|e| panic!("{e}"));
    let mut k = BTreeMap::new();
    k.insert("k1".to_string(), vec![7u8; 32]);
    let keys = invited::token::Keys::from_bytes("k1", k);
    let email = |s| Email::parse(s).unwrap_or_else(|e| panic!("{e}"));
    let (from, reply_to, to) = (
        email("partners@invited.test"),
        email("replies@invited.test"),
        email("r00000@d00.test"),
    );
    let sender = Sender {
        from_name: "Contoso Distribution",
        from: &from,
        reply_to: &reply_to,
        public_url: "http://links.invited.test",
        keys: &keys,
        templates: &templates,
        dkim: None,
    };
    let fields = MailFieldsV1 {
        from_name: "Contoso Distribution".into(),
        recipient_email: to.to_string(),
        company: "Fabrikam Korea Ltd.".into(),
        country: "KR".into(),
        provider_name: "Contoso Distribution Korea".into(),
        provider_email: "ops@contoso.test".into(),
        reply_enabled: true,
        needs_enrollment: true,
        state: "invited".into(),
        ..Default::default()
    };
    let item = OutboxItem::queued(
        invited::model::random_ref(),
        "invited.test",
        &to,
        "",
        MailKind::ProviderInvitation,
        "en-US",
        RecordId::random(),
        fields,
        Some(LinkSpec {
            purpose: Purpose::AuthorizeProvider,
            generation: 0,
            expires_at: 2_000_000_000,
        }),
        chrono::Utc::now(),
    );
    sender
        .build(&item)
        .unwrap_or_else(|e| panic!("{e}"))
        .formatted()
}

/// CPU seconds this process has used (user + system).
fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the ")"
    (ticks(11) + ticks(12)) / 100.0
}

/// Accepts everything; counts the messages.
async fn tiny_sink(listener: tokio::net::TcpListener, received: Arc<AtomicUsize>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            return;
        };
        let received = received.clone();
        let _ = conn.set_nodelay(true);
        tokio::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut r = BufReader::new(r);
            let _ = w.write_all(b"220 tiny ESMTP\r\n").await;
            let mut line = String::new();
            let mut in_data = false;
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let reply: &[u8] = if in_data {
                    if line != ".\r\n" {
                        continue;
                    }
                    in_data = false;
                    received.fetch_add(1, Ordering::Relaxed);
                    b"250 2.0.0 Ok\r\n"
                } else if line.starts_with("EHLO") {
                    b"250-tiny\r\n250 PIPELINING\r\n"
                } else if line.starts_with("DATA") {
                    in_data = true;
                    b"354 go ahead\r\n"
                } else if line.starts_with("QUIT") {
                    let _ = w.write_all(b"221 Bye\r\n").await;
                    return;
                } else {
                    b"250 Ok\r\n"
                };
                if w.write_all(reply).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let external = std::env::var("SMTP_BENCH_PORT")
        .ok()
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|_| bench);
    let (n, c) = if external.is_some() {
        (env("SMTP_BENCH_N", 20_000), env("SMTP_BENCH_C", 4))
    } else {
        (50, 2)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let msg = invitation();
    rt.block_on(async move {
        let received = Arc::new(AtomicUsize::new(0));
        let port = match external {
            Some(p) => p,
            None => {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let p = l.local_addr().map(|a| a.port()).unwrap_or(0);
                tokio::spawn(tiny_sink(l, received.clone()));
                p
            }
        };
        let cfg = invited::config::SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            tls: invited::config::Tls::None,
            username: None,
            password_file: None,
            ca_file: None,
            oauth2: None,
        };
        let pool = Arc::new(invited::sender::SmtpPool::new(&cfg, c).unwrap_or_else(|e| panic!("{e}")));
        let env = lettre::address::Envelope::new(
            Some("bench@invited.test".parse().unwrap_or_else(|e| panic!("{e}"))),
            vec!["r@d00.test".parse().unwrap_or_else(|e| panic!("{e}"))],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // as the daemon: PIPELINE_DEPTH sends in flight per connection
        let in_flight = Arc::new(tokio::sync::Semaphore::new(
            c * invited::sender::PIPELINE_DEPTH,
        ));
        let (c0, t0) = (cpu(), Instant::now());
        let mut sends = tokio::task::JoinSet::new();
        for _ in 0..n {
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let (pool, env, msg) = (pool.clone(), env.clone(), msg.clone());
            sends.spawn(async move {
                let r = pool.send(&env, &msg).await;
                drop(permit);
                r
            });
        }
        let mut failed = 0;
        while let Some(r) = sends.join_next().await {
            if !matches!(r, Ok(Ok(()))) {
                failed += 1;
            }
        }
        let (secs, cpu_s) = (t0.elapsed().as_secs_f64(), cpu() - c0);
        pool.close().await;
        println!(
            "SmtpPool -> 127.0.0.1:{port}: {n} messages of {} bytes, concurrency {c}: {:.0} msg/s, client CPU {:.0} µs/msg, {failed} failed",
            msg.len(),
            n as f64 / secs,
            cpu_s * 1e6 / n as f64
        );
        assert_eq!(failed, 0, "every message accepted");
        if external.is_none() {
            assert_eq!(received.load(Ordering::Relaxed), n, "every message arrived");
        }
    });
}
