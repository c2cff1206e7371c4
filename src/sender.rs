//! The sender task: drains the outbox through one transport (file or pooled SMTP), marks what
//! was sent, retries transient failures with backoff and jitter, and dead-letters the rest.
//! No email leaves the daemon except from here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::{Outbound, SmtpConfig, Tls};
use crate::outbox::{OutboxItem, Sender};

/// How a send failed decides what happens next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("transient: {0}")]
    Transient(String),
    #[error("permanent: {0}")]
    Permanent(String),
}

pub enum Transport {
    File { dir: PathBuf },
    Smtp(Box<SmtpPool>),
}

impl Transport {
    pub fn from_config(outbound: &Outbound, concurrency: usize) -> anyhow::Result<Transport> {
        Ok(match outbound {
            Outbound::File { dir } => {
                crate::private::create_dir(dir)
                    .map_err(|e| anyhow::anyhow!("mail.outbound.dir {}: {e}", dir.display()))?;
                Transport::File { dir: dir.clone() }
            }
            Outbound::Smtp(s) => Transport::Smtp(Box::new(SmtpPool::new(s, concurrency)?)),
        })
    }

    pub async fn send(
        &self,
        envelope: Envelope,
        message_id: &str,
        bytes: Vec<u8>,
    ) -> Result<(), SendError> {
        match self {
            Transport::File { dir } => {
                let dir = dir.clone();
                let name = message_id
                    .split('@')
                    .next()
                    .unwrap_or(message_id)
                    .to_string();
                tokio::task::spawn_blocking(move || write_eml(&dir, &name, &bytes))
                    .await
                    .map_err(|e| SendError::Transient(format!("file transport task: {e}")))?
            }
            Transport::Smtp(pool) => pool.send(&envelope, &bytes).await,
        }
    }
}

/// Pooled SMTP connections, kept open and reused. Our own small pool rather than lettre's
/// because every connection must have TCP_NODELAY: without it each SMTP command waits on Nagle
/// and delayed ACK (~40 ms a round trip), which held bulk sends to under 100 messages a second.
pub struct SmtpPool {
    cfg: SmtpConfig,
    hello: ClientId,
    tls_params: Option<TlsParameters>,
    implicit_tls: Option<Arc<rustls::ClientConfig>>,
    credentials: Option<Credentials>,
    idle: std::sync::Mutex<Vec<AsyncSmtpConnection>>,
    max_idle: usize,
}

/// A TLS stream lettre can drive (for implicit TLS, set up before the SMTP greeting).
#[derive(Debug)]
struct TlsStream(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl tokio::io::AsyncRead for TlsStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}
impl tokio::io::AsyncWrite for TlsStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
impl lettre::transport::smtp::client::AsyncTokioStream for TlsStream {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

fn classify(e: lettre::transport::smtp::Error) -> SendError {
    if e.is_permanent() {
        SendError::Permanent(e.to_string())
    } else {
        SendError::Transient(e.to_string())
    }
}

impl SmtpPool {
    pub fn new(s: &SmtpConfig, concurrency: usize) -> anyhow::Result<SmtpPool> {
        let mut tls_params = None;
        let mut implicit_tls = None;
        match s.tls {
            Tls::None => {}
            Tls::StartTls => {
                let mut b = TlsParameters::builder(s.host.clone());
                if let Some(ca) = &s.ca_file {
                    let pem = std::fs::read(ca).map_err(|e| {
                        anyhow::anyhow!("mail.outbound.ca_file {}: {e}", ca.display())
                    })?;
                    let cert = lettre::transport::smtp::client::Certificate::from_pem(&pem)
                        .map_err(|e| {
                            anyhow::anyhow!("mail.outbound.ca_file {}: {e}", ca.display())
                        })?;
                    b = b.add_root_certificate(cert);
                }
                tls_params = Some(b.build_rustls()?);
            }
            Tls::Tls => implicit_tls = Some(crate::imap::tls_config(s.ca_file.as_deref())?),
        }
        let credentials = match (&s.username, &s.password_file) {
            (Some(user), Some(file)) => {
                let password = std::fs::read_to_string(file).map_err(|e| {
                    anyhow::anyhow!("mail.outbound.password_file {}: {e}", file.display())
                })?;
                Some(Credentials::new(
                    user.clone(),
                    password.trim_end_matches(['\r', '\n']).to_string(),
                ))
            }
            (Some(_), None) => {
                return Err(anyhow::anyhow!(
                    "mail.outbound.password_file is required with mail.outbound.username"
                ))
            }
            _ => None,
        };
        let hello = ClientId::Domain(hostname_or_default());
        Ok(SmtpPool {
            cfg: s.clone(),
            hello,
            tls_params,
            implicit_tls,
            credentials,
            idle: std::sync::Mutex::new(Vec::new()),
            max_idle: concurrency,
        })
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let net = |e: std::io::Error| {
            SendError::Transient(format!(
                "connecting to {}:{}: {e}",
                self.cfg.host, self.cfg.port
            ))
        };
        let tcp = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::net::TcpStream::connect((self.cfg.host.as_str(), self.cfg.port)),
        )
        .await
        .map_err(|_| {
            SendError::Transient(format!(
                "connecting to {}:{}: timed out",
                self.cfg.host, self.cfg.port
            ))
        })?
        .map_err(net)?;
        tcp.set_nodelay(true).map_err(net)?;
        let mut conn = match &self.implicit_tls {
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(self.cfg.host.clone())
                    .map_err(|e| SendError::Permanent(format!("mail.outbound.host: {e}")))?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(net)?;
                AsyncSmtpConnection::connect_with_transport(
                    Box::new(TlsStream(stream)),
                    &self.hello,
                )
                .await
                .map_err(classify)?
            }
            None => AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello)
                .await
                .map_err(classify)?,
        };
        if let Some(params) = &self.tls_params {
            conn.starttls(params.clone(), &self.hello)
                .await
                .map_err(classify)?;
        }
        if let Some(c) = &self.credentials {
            conn.auth(DEFAULT_MECHANISMS, c).await.map_err(classify)?;
        }
        Ok(conn)
    }

    pub async fn send(&self, envelope: &Envelope, bytes: &[u8]) -> Result<(), SendError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) if !c.has_broken() => c,
            _ => self.connect().await?,
        };
        match tokio::time::timeout(Duration::from_secs(120), conn.send(envelope, bytes)).await {
            Ok(Ok(_)) => {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < self.max_idle {
                    idle.push(conn);
                }
                Ok(())
            }
            Ok(Err(e)) => {
                // After a failed transaction the session state is unknown: never reuse it.
                conn.abort().await;
                Err(classify(e))
            }
            Err(_) => {
                conn.abort().await;
                Err(SendError::Transient(
                    "the SMTP server did not answer within 120 s".into(),
                ))
            }
        }
    }
}

fn hostname_or_default() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "localhost".to_string())
}

/// Writes `<name>.eml` atomically (temp file, fsync, rename): a re-send after a crash overwrites
/// the same file, so the outbox directory never holds a duplicate or a half-written message.
fn write_eml(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<(), SendError> {
    use std::io::Write;
    let io = |e: std::io::Error| SendError::Transient(format!("writing to {}: {e}", dir.display()));
    let tmp = dir.join(format!(".{name}.tmp"));
    // 0600: the message carries a live link token
    let mut f = crate::private::create_file(&tmp, false).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, dir.join(format!("{name}.eml"))).map_err(io)?;
    Ok(())
}

/// Exponential backoff with jitter: ~2 s, 4 s, 8 s … capped at 10 minutes.
pub fn backoff(attempts: u32) -> Duration {
    use rand::Rng;
    let base = 2u64.saturating_pow(attempts.min(20)).min(600);
    let jitter = rand::thread_rng().gen_range(0.75..1.25);
    Duration::from_millis((base as f64 * 1000.0 * jitter) as u64)
}

type SendResult = (OutboxItem, Result<(), SendError>);

/// A pipeline, so the SMTP connections stay busy: the dispatcher keeps up to `concurrency` sends in
/// flight, a recorder writes their results in groups (one batch and one flush per group), and an
/// item is not fetched again while it is in flight or its result is not yet recorded.
pub async fn run(app: Arc<App>, transport: Arc<Transport>, shutdown: CancellationToken) {
    let (concurrency, rate) = {
        let sh = app.shared();
        (sh.cfg.concurrency, sh.cfg.rate_per_second)
    };
    // messages-per-second limit: one send may start per tick
    let mut pacing = (rate > 0).then(|| {
        let mut iv = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        iv
    });
    let in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
    let recorded = Arc::new(tokio::sync::Notify::new());
    let (tx, rx) = tokio::sync::mpsc::channel::<SendResult>(4096);
    let recorder = tokio::spawn(record(app.clone(), rx, in_flight.clone(), recorded.clone()));
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut sends = tokio::task::JoinSet::new();
    while !shutdown.is_cancelled() {
        while sends.try_join_next().is_some() {} // reap finished sends
        let now = Utc::now();
        // The read and the filter happen under the in-flight lock. The recorder writes a result
        // before it takes this lock to drop the id, so an item is either still marked in flight
        // here or already recorded in what we read — never neither, which would send it twice.
        let due: Vec<OutboxItem> = {
            let busy = in_flight.lock().unwrap_or_else(|p| p.into_inner());
            match app.store.read().outbox_due(&now, 1024) {
                Ok(d) => d.into_iter().filter(|i| !busy.contains(&i.id)).collect(),
                Err(e) => {
                    tracing::error!(error = %e, "reading the outbox");
                    Vec::new()
                }
            }
        };
        if due.is_empty() {
            let wait = match app.store.read().outbox_next_due() {
                Ok(Some(ms)) => {
                    Duration::from_millis((ms - now.timestamp_millis()).clamp(10, 1000) as u64)
                }
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = app.outbox_wake.notified() => {}
                _ = recorded.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        for item in due {
            let permit = tokio::select! {
                p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.cancelled() => break,
            };
            if let Some(p) = pacing.as_mut() {
                p.tick().await;
            }
            in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(item.id.clone());
            let (app, transport, tx) = (app.clone(), transport.clone(), tx.clone());
            sends.spawn(async move {
                let res = {
                    let _busy = app.heartbeats.sender.busy();
                    send_one(&app, &transport, &item).await
                };
                let _ = tx.send((item, res)).await;
                drop(permit);
            });
        }
    }
    // SIGTERM drain: no new sends. The ones in flight get DRAIN_GRACE to finish and be recorded;
    // any still waiting on a server then are dropped and stay queued (sent again after the
    // restart, with the same Message-ID), so the daemon stops within systemd's timeout.
    let finished = tokio::time::timeout(DRAIN_GRACE, async {
        while sends.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            abandoned = sends.len(),
            "stopping: sends still waiting on the server go back to the queue"
        );
        sends.shutdown().await;
    }
    drop(tx);
    let _ = recorder.await;
}

/// How long a stopping sender waits for sends in flight (the whole stop must fit in 10 s).
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);

async fn record(
    app: Arc<App>,
    mut rx: tokio::sync::mpsc::Receiver<SendResult>,
    in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    recorded: Arc<tokio::sync::Notify>,
) {
    while let Some(first) = rx.recv().await {
        // Group results for up to 20 ms: one batch and one flush per group, not per message.
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        while batch.len() < 1024 {
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => batch.push(r),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let ids: Vec<String> = batch.iter().map(|(i, _)| i.id.clone()).collect();
        if let Err(e) = app.record_sends(batch, Utc::now()).await {
            // the items stay queued and are sent again (same Message-ID)
            tracing::error!(error = %e, "recording send results");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let mut busy = in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            busy.remove(&id);
        }
        drop(busy);
        recorded.notify_one();
    }
}

async fn send_one(app: &App, transport: &Transport, item: &OutboxItem) -> Result<(), SendError> {
    let sh = app.shared();
    let sender = Sender {
        from_name: &sh.cfg.from_name,
        from: &sh.cfg.from,
        reply_to: &sh.cfg.reply_to,
        public_url: &sh.cfg.public_url,
        keys: &sh.keys,
        templates: &sh.templates,
        dkim: sh.dkim.as_ref(),
    };
    let bytes = sender
        .wire_bytes(item, Utc::now())
        .map_err(|e| SendError::Permanent(e.to_string()))?;
    // VERP: the envelope sender is this message's own reply address, so a bounce comes back to
    // the plus address that names it.
    let env = sender
        .reply_address(&item.id)
        .ok()
        .zip(lettre::Address::new(item.to.local(), item.to.domain()).ok())
        .and_then(|(from, to)| Envelope::new(Some(from), vec![to]).ok())
        .ok_or_else(|| SendError::Permanent("cannot build the envelope".into()))?;
    transport.send(env, &item.message_id, bytes).await
}
