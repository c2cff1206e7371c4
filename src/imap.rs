//! The `imap` inbound source: IDLE when the server has it (re-issued well before the 29-minute
//! limit), polling otherwise; UIDVALIDITY and the last handled UID kept in the store so nothing is
//! handled twice or skipped across restarts; handled messages moved to `processed_mailbox` (or
//! flagged where MOVE is missing); reconnects with backoff. Each message's RFC822.SIZE is
//! fetched before its body: one over `classify::MAX_MESSAGE_BYTES` is fetched only as far as
//! the first `classify::MAX_HEAD_BYTES` of its header and ends `unrecognised`, "too large".
//! Login is LOGIN with a password, or AUTHENTICATE XOAUTH2 / OAUTHBEARER with a bearer token from
//! `oauth` (a refused token is fetched again once and the login retried).

use std::sync::Arc;

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use async_imap::extensions::idle::IdleResponse;
use chrono::Utc;
use futures_util::StreamExt;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::classify;
use crate::config::{ImapConfig, MailAuth, OAuth2Mechanism, Tls};
use crate::oauth::{BearerToken, TokenSource};

/// Re-issue IDLE well before RFC 2177's 29-minute server timeout.
const IDLE_RENEW: Duration = Duration::from_secs(25 * 60);

pub use crate::tls::{tls_config, Stream};

pub type Session = async_imap::Session<Stream>;

async fn tls_wrap(
    tcp: TcpStream,
    host: &str,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let name = rustls_pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| anyhow!("mail.inbound.host {host:?}: {e}"))?;
    Ok(tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?)
}

/// Connects (TLS / STARTTLS / plain as configured) and reads the greeting; not logged in.
async fn open(
    cfg: &ImapConfig,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<async_imap::Client<Stream>> {
    let tcp = TcpStream::connect((cfg.host.as_str(), cfg.port))
        .await
        .with_context(|| format!("connecting to {}:{}", cfg.host, cfg.port))?;
    // Without NODELAY every command round trip waits on Nagle + delayed ACK (~40-90 ms).
    tcp.set_nodelay(true)?;
    Ok(match cfg.tls {
        Tls::Tls => {
            let mut c = async_imap::Client::new(Stream::Tls(Box::new(
                tls_wrap(tcp, &cfg.host, tls).await?,
            )));
            c.read_response()
                .await?
                .ok_or_else(|| anyhow!("no IMAP greeting"))?;
            c
        }
        Tls::None => {
            let mut c = async_imap::Client::new(Stream::Plain(tcp));
            c.read_response()
                .await?
                .ok_or_else(|| anyhow!("no IMAP greeting"))?;
            c
        }
        Tls::StartTls => {
            let mut c = async_imap::Client::new(Stream::Plain(tcp));
            c.read_response()
                .await?
                .ok_or_else(|| anyhow!("no IMAP greeting"))?;
            c.run_command_and_check_ok("STARTTLS", None)
                .await
                .context("STARTTLS")?;
            let Stream::Plain(tcp) = c.into_inner() else {
                return Err(anyhow!("unexpected stream"));
            };
            async_imap::Client::new(Stream::Tls(Box::new(tls_wrap(tcp, &cfg.host, tls).await?)))
        }
    })
}

/// Connects and logs in with a password (LOGIN).
pub async fn connect(
    cfg: &ImapConfig,
    password: &str,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<Session> {
    open(cfg, tls)
        .await?
        .login(&cfg.username, password)
        .await
        .map_err(|(e, _)| anyhow!("IMAP login as {} failed: {e}", cfg.username))
}

/// The SASL exchange for a bearer token: the initial response first; any further challenge is
/// the server's error report (RFC 7628 3.2.2, and XOAUTH2's JSON), kept for the log and
/// answered with the dummy response that ends the exchange.
struct BearerAuth {
    initial: Option<String>,
    dummy: &'static str,
    server_said: Arc<std::sync::Mutex<String>>,
}

impl async_imap::Authenticator for BearerAuth {
    type Response = String;
    fn process(&mut self, challenge: &[u8]) -> String {
        match self.initial.take() {
            Some(first) => first,
            None => {
                if let Ok(mut said) = self.server_said.lock() {
                    *said = crate::text::escape_controls(&String::from_utf8_lossy(
                        &challenge[..challenge.len().min(512)],
                    ));
                }
                self.dummy.to_string()
            }
        }
    }
}

/// Why an OAuth2 login did not work.
#[derive(Debug, thiserror::Error)]
pub enum BearerLoginError {
    /// The server refused the token: its words (the tagged answer and, if any, its error challenge).
    #[error("{0}")]
    Refused(String),
    /// The connection or the protocol failed before the server judged the token.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Connects and logs in with a bearer token (AUTHENTICATE XOAUTH2 or OAUTHBEARER).
pub async fn connect_bearer(
    cfg: &ImapConfig,
    mechanism: OAuth2Mechanism,
    token: &BearerToken,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Session, BearerLoginError> {
    let client = open(cfg, tls).await?;
    let server_said = Arc::new(std::sync::Mutex::new(String::new()));
    let (name, initial, dummy) = match mechanism {
        OAuth2Mechanism::XOAuth2 => ("XOAUTH2", crate::oauth::xoauth2(&cfg.username, token), ""),
        OAuth2Mechanism::OAuthBearer => (
            "OAUTHBEARER",
            crate::oauth::oauthbearer(&cfg.username, &cfg.host, cfg.port, token),
            "\x01",
        ),
    };
    let auth = BearerAuth {
        initial: Some(initial),
        dummy,
        server_said: server_said.clone(),
    };
    match client.authenticate(name, auth).await {
        Ok(session) => Ok(session),
        Err((e, _)) => {
            let said = server_said.lock().map(|s| s.clone()).unwrap_or_default();
            let answer = crate::text::escape_controls(&e.to_string());
            match e {
                async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_) => {
                    Err(BearerLoginError::Refused(if said.is_empty() {
                        answer
                    } else {
                        format!("{answer} (challenge: {said})")
                    }))
                }
                _ => Err(BearerLoginError::Other(anyhow!(
                    "IMAP AUTHENTICATE {name} as {}: {answer}",
                    cfg.username
                ))),
            }
        }
    }
}

/// A bearer-token login; a refused token is fetched again once and the login retried.
async fn login_oauth2(
    cfg: &ImapConfig,
    mechanism: OAuth2Mechanism,
    tokens: &TokenSource,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<Session> {
    let token = tokens.token().await?;
    match connect_bearer(cfg, mechanism, &token, tls.clone()).await {
        Ok(s) => return Ok(s),
        Err(BearerLoginError::Other(e)) => return Err(e),
        Err(BearerLoginError::Refused(answer)) => {
            tracing::warn!(username = %cfg.username, mechanism = ?mechanism, server_answer = %answer, "IMAP refused the OAuth2 token; fetching a new token and retrying once");
        }
    }
    let token = tokens.refresh().await?;
    match connect_bearer(cfg, mechanism, &token, tls).await {
        Ok(s) => Ok(s),
        Err(BearerLoginError::Refused(answer)) => Err(anyhow!(
            "IMAP refused the OAuth2 login as {} again with a new token; server answer: {answer}",
            cfg.username
        )),
        Err(BearerLoginError::Other(e)) => Err(e),
    }
}

fn position_key(cfg: &ImapConfig) -> String {
    format!(
        "imap/{}@{}:{}/{}",
        cfg.username, cfg.host, cfg.port, cfg.mailbox
    )
}

/// Handles every message above the last handled UID; returns how many were handled.
pub async fn pass(
    app: &App,
    session: &mut Session,
    cfg: &ImapConfig,
    can_move: bool,
) -> anyhow::Result<usize> {
    let mbox = session
        .select(&cfg.mailbox)
        .await
        .with_context(|| format!("SELECT {}", cfg.mailbox))?;
    let validity = mbox.uid_validity.unwrap_or(0);
    let key = position_key(cfg);
    let last = match app.inbound_position(&key) {
        Some((v, uid)) if v == validity => uid,
        Some((v, _)) => {
            // A recreated mailbox: UIDs start again. Messages already handled are recognised by
            // Message-ID in `handle_inbound`, so starting from 0 re-applies nothing.
            tracing::warn!(old = v, new = validity, mailbox = %cfg.mailbox, "UIDVALIDITY changed; rescanning the mailbox");
            0
        }
        None => 0,
    };
    // Sizes first (RFC822.SIZE), so an oversize message is never fetched whole.
    let mut sizes: Vec<(u32, Option<u32>)> = Vec::new();
    {
        let mut fetches = session
            .uid_fetch(format!("{}:*", last.saturating_add(1)), "(UID RFC822.SIZE)")
            .await?;
        while let Some(f) = fetches.next().await {
            let f = f?;
            // "n:*" names the last message even when it is below n
            if let Some(uid) = f.uid.filter(|u| *u > last) {
                sizes.push((uid, f.size));
            }
        }
    }
    sizes.sort_unstable();
    sizes.dedup_by_key(|(uid, _)| *uid);
    let mut handled = 0;
    // Messages are fetched, handled and moved in groups: one UID FETCH for a group, each message
    // applied in its own batch, one flush for the group, one UID MOVE, one position write. An
    // oversize message is a group of its own (only the start of its header is fetched).
    let mut rest = &sizes[..];
    while !rest.is_empty() {
        let group = next_group(rest);
        rest = &rest[group.len()..];
        // one group fetched, handled and moved is one unit of work for the watchdog
        let _busy = app.heartbeats.inbound.busy();
        let too_large = group.len() == 1
            && group[0]
                .1
                .is_some_and(|s| s as usize > classify::MAX_MESSAGE_BYTES);
        let query = if too_large {
            format!("(UID BODY.PEEK[HEADER]<0.{}>)", classify::MAX_HEAD_BYTES)
        } else {
            "(UID BODY.PEEK[])".to_string()
        };
        let set = uid_set(group.iter().map(|(u, _)| *u));
        let mut bodies: std::collections::HashMap<u32, Vec<u8>> = std::collections::HashMap::new();
        {
            let mut fetches = session.uid_fetch(&set, &query).await?;
            while let Some(f) = fetches.next().await {
                let f = f?;
                let Some(uid) = f.uid.filter(|u| group.iter().any(|(g, _)| g == u)) else {
                    continue;
                };
                let bytes = if too_large { f.header() } else { f.body() };
                if let Some(b) = bytes {
                    bodies.insert(uid, b.to_vec());
                }
            }
        }
        // in UID order; a message expunged meanwhile is simply not there
        let present: Vec<(u32, Option<u32>)> = group
            .iter()
            .copied()
            .filter(|(u, _)| bodies.contains_key(u))
            .collect();
        let inputs: Vec<crate::app::Inbound<'_>> = present
            .iter()
            .map(|(uid, size)| {
                let raw = bodies.get(uid).map_or(&[][..], Vec::as_slice);
                match size {
                    Some(size) if too_large => crate::app::Inbound::TooLarge {
                        head: raw,
                        size: u64::from(*size),
                    },
                    _ => crate::app::Inbound::Whole(raw),
                }
            })
            .collect();
        // Handled (outcomes stored and flushed) first, then moved, then the position advanced: a
        // crash in between re-reads the messages, which `handle_inbound` recognises.
        let outcomes = app.handle_inbound_batch(&inputs, Utc::now()).await;
        // Moved: every message handled. The position: past the group, or, when one failed, up to
        // the one before it (the next pass reads it again, and the handled ones after it are
        // recognised by Message-ID and only moved).
        let mut done: Vec<u32> = Vec::with_capacity(present.len());
        let mut error: Option<(u32, crate::app::AppError)> = None;
        for ((uid, _), outcome) in present.iter().zip(outcomes) {
            match outcome {
                Ok(Some(r)) => {
                    // the record's text is escaped at the source (`app::inbound`)
                    tracing::info!(uid, message_id = %r.message_id, outcome = %r.outcome, effect = %r.effect, "inbound message");
                    done.push(*uid);
                }
                Ok(None) => done.push(*uid),
                Err(e) => {
                    if error.is_none() {
                        error = Some((*uid, e));
                    }
                }
            }
        }
        if !done.is_empty() {
            let set = uid_set(done.iter().copied());
            if can_move {
                session
                    .uid_mv(&set, &cfg.processed_mailbox)
                    .await
                    .with_context(|| format!("UID MOVE {set}"))?;
            } else {
                session
                    .uid_store(&set, "+FLAGS (\\Seen \\Flagged)")
                    .await?
                    .for_each(|_| async {})
                    .await;
            }
            handled += done.len();
        }
        if let Some((uid, e)) = error {
            if let Some(before) = group.iter().map(|(u, _)| *u).filter(|u| *u < uid).max() {
                app.set_inbound_position(&key, validity, before).await?;
            }
            return Err(anyhow!("message UID {uid} left for the next pass: {e}"));
        }
        // the whole group is handled (or was expunged): the position moves past it
        if let Some((last, _)) = group.last() {
            app.set_inbound_position(&key, validity, *last).await?;
        }
    }
    Ok(handled)
}

/// Messages fetched together: up to `GROUP_MESSAGES` of them and `GROUP_BYTES` in all (by
/// RFC822.SIZE); an oversize message goes alone.
const GROUP_MESSAGES: usize = 200;
const GROUP_BYTES: u64 = 8 * 1024 * 1024;

fn next_group(sizes: &[(u32, Option<u32>)]) -> &[(u32, Option<u32>)] {
    let oversize = |s: Option<u32>| s.is_some_and(|s| s as usize > classify::MAX_MESSAGE_BYTES);
    if sizes.first().is_some_and(|(_, s)| oversize(*s)) {
        return &sizes[..1];
    }
    let mut bytes = 0u64;
    let mut n = 0;
    for (_, s) in sizes.iter().take(GROUP_MESSAGES) {
        if oversize(*s) {
            break;
        }
        bytes += u64::from(s.unwrap_or(0));
        if n > 0 && bytes > GROUP_BYTES {
            break;
        }
        n += 1;
    }
    &sizes[..n.max(1)]
}

/// An IMAP sequence set of UIDs, ascending: runs written as `a:b` (`1:3,7,9:10`).
fn uid_set(uids: impl Iterator<Item = u32>) -> String {
    let mut out = String::new();
    let mut run: Option<(u32, u32)> = None;
    let flush = |out: &mut String, (a, b): (u32, u32)| {
        if !out.is_empty() {
            out.push(',');
        }
        if a == b {
            out.push_str(&a.to_string());
        } else {
            out.push_str(&format!("{a}:{b}"));
        }
    };
    for u in uids {
        run = match run {
            Some((a, b)) if u == b + 1 => Some((a, u)),
            Some(r) => {
                flush(&mut out, r);
                Some((u, u))
            }
            None => Some((u, u)),
        };
    }
    if let Some(r) = run {
        flush(&mut out, r);
    }
    out
}

async fn session_loop(
    app: &App,
    cfg: &ImapConfig,
    poll: Duration,
    tls: Arc<rustls::ClientConfig>,
    shutdown: &CancellationToken,
    tokens: Option<&TokenSource>,
    connected: &mut bool,
) -> anyhow::Result<()> {
    let mut session = match (&cfg.auth, tokens) {
        (MailAuth::OAuth2 { mechanism, .. }, Some(tokens)) => {
            login_oauth2(cfg, *mechanism, tokens, tls).await?
        }
        (MailAuth::OAuth2 { .. }, None) => return Err(anyhow!("no OAuth2 token source")),
        (MailAuth::Password { password_file }, _) => {
            let password = std::fs::read_to_string(password_file).with_context(|| {
                format!("mail.inbound.password_file {}", password_file.display())
            })?;
            connect(cfg, password.trim_end_matches(['\r', '\n']), tls).await?
        }
    };
    *connected = true;
    let caps = session.capabilities().await?;
    let can_idle = cfg.idle && caps.has_str("IDLE");
    let can_move = caps.has_str("MOVE");
    if can_move {
        // Ignore "already exists"; a real failure shows at the first MOVE.
        let _ = session.create(&cfg.processed_mailbox).await;
    }
    tracing::info!(host = %cfg.host, mailbox = %cfg.mailbox, idle = can_idle, r#move = can_move, "IMAP connected");
    loop {
        let n = pass(app, &mut session, cfg, can_move).await?;
        if n > 0 {
            tracing::debug!(handled = n, "IMAP pass");
        }
        if shutdown.is_cancelled() {
            let _ = session.logout().await;
            return Ok(());
        }
        if can_idle {
            let mut idle = session.idle();
            idle.init().await?;
            let res = {
                let (fut, stop) = idle.wait_with_timeout(IDLE_RENEW);
                tokio::pin!(fut);
                tokio::select! {
                    r = &mut fut => r,
                    _ = shutdown.cancelled() => {
                        drop(stop);
                        fut.await
                    }
                }
            };
            match res? {
                IdleResponse::NewData(_)
                | IdleResponse::Timeout
                | IdleResponse::ManualInterrupt => {}
            }
            session = idle.done().await?;
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(poll) => {}
            }
            session.noop().await?;
        }
    }
}

pub async fn run(
    app: Arc<App>,
    cfg: ImapConfig,
    poll: Duration,
    ca_file: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) {
    let tls = match tls_config(ca_file.as_deref()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "IMAP TLS setup failed; the IMAP source is not running");
            return;
        }
    };
    // One token source for the life of the task, so its cache outlives a reconnect.
    let tokens = match &cfg.auth {
        MailAuth::OAuth2 { oauth2, .. } => match TokenSource::new((**oauth2).clone()) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "OAuth2 setup failed; the IMAP source is not running");
                return;
            }
        },
        MailAuth::Password { .. } => None,
    };
    let mut delay = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        let mut connected = false;
        match session_loop(
            &app,
            &cfg,
            poll,
            tls.clone(),
            &shutdown,
            tokens.as_ref(),
            &mut connected,
        )
        .await
        {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "IMAP session ended; reconnecting")
            }
        }
        if connected {
            delay = Duration::from_millis(500);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod group_tests {
    use super::*;

    #[test]
    fn uid_sets_and_groups() {
        assert_eq!(uid_set([1, 2, 3, 7, 9, 10].into_iter()), "1:3,7,9:10");
        assert_eq!(uid_set([5].into_iter()), "5");
        assert_eq!(uid_set(std::iter::empty()), "");
        let big = Some(classify::MAX_MESSAGE_BYTES as u32 + 1);
        let sizes: Vec<(u32, Option<u32>)> = (1..=450).map(|u| (u, Some(1000))).collect();
        assert_eq!(next_group(&sizes).len(), GROUP_MESSAGES);
        let mixed = vec![(1, Some(10)), (2, Some(10)), (3, big), (4, Some(10))];
        assert_eq!(
            next_group(&mixed),
            &mixed[..2],
            "an oversize message ends a group"
        );
        assert_eq!(next_group(&mixed[2..]), &mixed[2..3], "and goes alone");
        let heavy: Vec<(u32, Option<u32>)> = (1..=10).map(|u| (u, Some(3 << 20))).collect();
        assert_eq!(next_group(&heavy).len(), 2, "8 MiB per group");
        assert_eq!(next_group(&[(1, None)]).len(), 1);
    }
}
