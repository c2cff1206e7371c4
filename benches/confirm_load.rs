//! The load client of `bench/confirmations`: POSTs one link form per token, from C concurrent
//! keep-alive HTTP/1.1 connections, and reports the rate and the latency percentiles.
//!
//!   CONFIRM_URL=http://127.0.0.1:PORT CONFIRM_TOKENS=FILE [CONFIRM_CLIENTS=32] \
//!   [CONFIRM_BODY=action=decline] [CONFIRM_SECS=300] cargo bench --bench confirm_load
//!
//! No request starts after CONFIRM_SECS: the rest of the tokens are reported as not posted.
//! FILE holds one token per line (the part after `/t/`). Each token is POSTed once. A request
//! counts as done when its answer is `200` and the page says the action was done (the result
//! page's `class="result-done"`); anything else is counted and reported, never retried. The
//! latency of a request runs from the first byte written to the last byte of the answer read.
//!
//! Without CONFIRM_URL (as under `cargo test --all-targets`) it runs against a small in-process
//! HTTP server that answers after a short delay, and checks that every request was counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    done: usize,
    other: std::collections::BTreeMap<String, usize>,
}

/// One answer: its status code and body.
async fn read_answer(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before the status line",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok((status, body))
}

async fn client(
    addr: String,
    host: String,
    body: Arc<String>,
    tokens: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    tally: Arc<Mutex<Tally>>,
    deadline: Instant,
) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    loop {
        if Instant::now() > deadline {
            return;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(token) = tokens.get(i) else { return };
        let req = format!(
            "POST /t/{token} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let started = Instant::now();
        let answer = async {
            if conn.is_none() {
                let s = TcpStream::connect(&addr).await?;
                s.set_nodelay(true)?;
                conn = Some(BufReader::new(s));
            }
            let c = conn.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
            c.get_mut().write_all(req.as_bytes()).await?;
            read_answer(c).await
        }
        .await;
        let took = started.elapsed();
        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
        t.latencies.push(took);
        match answer {
            Ok((200, page)) if contains(&page, b"class=\"result-done\"") => t.done += 1,
            Ok((status, _)) => *t.other.entry(format!("status {status}")).or_default() += 1,
            Err(e) => {
                *t.other.entry(format!("error {}", e.kind())).or_default() += 1;
                conn = None;
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

struct Report {
    requests: usize,
    done: usize,
    other: std::collections::BTreeMap<String, usize>,
    secs: f64,
    p50: Duration,
    p90: Duration,
    p99: Duration,
    max: Duration,
}

async fn run(
    url: &str,
    tokens: Vec<String>,
    clients: usize,
    body: &str,
    limit: Duration,
) -> Report {
    let authority = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/')
        .to_string();
    let tokens = Arc::new(tokens);
    let next = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let body = Arc::new(body.to_string());
    let started = Instant::now();
    let deadline = started + limit;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        set.spawn(client(
            authority.clone(),
            "links.invited.test".to_string(),
            body.clone(),
            tokens.clone(),
            next.clone(),
            tally.clone(),
            deadline,
        ));
    }
    while set.join_next().await.is_some() {}
    let secs = started.elapsed().as_secs_f64();
    let mut t = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    t.latencies.sort();
    Report {
        requests: t.latencies.len(),
        done: t.done,
        other: t.other,
        secs,
        p50: percentile(&t.latencies, 0.50),
        p90: percentile(&t.latencies, 0.90),
        p99: percentile(&t.latencies, 0.99),
        max: t.latencies.last().copied().unwrap_or_default(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// A tiny HTTP server for the self-test: answers every request with the done marker after `delay`.
async fn test_server(delay: Duration) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match r.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some(v) = l.strip_prefix("Content-Length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    let page = b"<main class=\"result-done\">ok</main>";
                    let mut answer =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", page.len())
                            .into_bytes();
                    answer.extend_from_slice(page);
                    if r.get_mut().write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let clients: usize = std::env::var("CONFIRM_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let body = std::env::var("CONFIRM_BODY").unwrap_or_else(|_| "action=decline".into());
    match std::env::var("CONFIRM_URL") {
        Ok(url) => {
            let file = std::env::var("CONFIRM_TOKENS")
                .unwrap_or_else(|_| panic!("CONFIRM_TOKENS=FILE is needed with CONFIRM_URL"));
            let tokens: Vec<String> = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{file}: {e}"))
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            let limit = std::env::var("CONFIRM_SECS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(Duration::from_secs(300), Duration::from_secs);
            let total = tokens.len();
            let r = rt.block_on(run(&url, tokens, clients, &body, limit));
            let mut other = r.other.clone();
            if r.requests < total {
                other.insert("not posted (CONFIRM_SECS)".into(), total - r.requests);
            }
            println!(
                "confirmations: {} requests, {} done, {:.0}/s over {:.2} s, {} clients; latency ms p50 {} p90 {} p99 {} max {}{}",
                r.requests,
                r.done,
                r.done as f64 / r.secs,
                r.secs,
                clients,
                ms(r.p50),
                ms(r.p90),
                ms(r.p99),
                ms(r.max),
                if other.is_empty() {
                    String::new()
                } else {
                    format!("; not done: {other:?}")
                }
            );
        }
        Err(_) => {
            let delay = Duration::from_millis(2);
            let r = rt.block_on(async {
                let url = test_server(delay).await;
                let tokens = (0..200).map(|i| format!("t{i}")).collect();
                run(&url, tokens, 8, &body, Duration::from_secs(600)).await
            });
            assert_eq!(r.requests, 200, "every token posted once");
            assert_eq!(r.done, 200, "every answer read: {:?}", r.other);
            assert!(r.p99 >= r.p50 && r.max >= r.p99);
            println!(
                "confirm_load self-test: 200 requests to an in-process server, p50 {} ms",
                ms(r.p50)
            );
        }
    }
}
