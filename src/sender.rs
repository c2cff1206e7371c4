//! The sender task: drains the outbox through one transport (file or pooled SMTP), marks what
//! was sent, retries transient failures with backoff and jitter, and dead-letters the rest.
//! No email leaves the daemon except from here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lettre::address::Envelope;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::{Outbound, SmtpConfig, Tls};
use crate::outbox::{OutboxItem, Sender};

/// How a send failed decides what happens next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// This message was refused for now (4xx to its MAIL, RCPT or DATA, or the connection lost
    /// during its transaction): retried with backoff up to `max_age`.
    #[error("transient: {0}")]
    Transient(String),
    /// This message was refused for good (5xx to its MAIL, RCPT or DATA): dead-lettered, and
    /// the record becomes undeliverable.
    #[error("permanent: {0}")]
    Permanent(String),
    /// The transport failed, not this message: connect, TLS, greeting, EHLO, AUTH (`535 5.7.8`),
    /// a 421, anything before MAIL FROM. The message stays queued and backs off, whatever its
    /// age; the recipient is never made undeliverable for it.
    #[error("transport: {0}")]
    Transport(String),
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

    /// At shutdown: QUIT on the pooled SMTP connections.
    pub async fn close(&self) {
        if let Transport::Smtp(pool) = self {
            pool.close().await;
        }
    }
}

/// Pooled SMTP connections (our own client, `crate::smtp`), kept open and reused: at most
/// `concurrency` idle ones. A connection that saw an error other than a clean refusal of one
/// message is dropped, never reused. After a transport failure (connect, TLS, greeting, EHLO,
/// AUTH, 421) the pool holds off new connections for a while, so a wrong password or a server
/// that is down is not hammered by every queued message: sends in that window fail at once with
/// the cause, and each message keeps its own backoff.
pub struct SmtpPool {
    server: crate::smtp::Server,
    idle: std::sync::Mutex<Vec<crate::smtp::Connection>>,
    max_idle: usize,
    hold_off: std::sync::Mutex<HoldOff>,
}

/// How long an idle connection is kept: past this the server may have dropped it (smtp-sink
/// after 100 s, Postfix's smtpd after 300 s), so we reconnect rather than find out mid-send.
const MAX_IDLE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct HoldOff {
    until: Option<std::time::Instant>,
    failures: u32,
    cause: String,
}

impl HoldOff {
    /// 1 s after the first transport failure, doubling to 60 s while they go on.
    fn delay(failures: u32) -> Duration {
        Duration::from_secs(
            2u64.saturating_pow(failures.saturating_sub(1).min(6))
                .min(60),
        )
    }
}

impl SmtpPool {
    pub fn new(s: &SmtpConfig, concurrency: usize) -> anyhow::Result<SmtpPool> {
        use crate::smtp::Security;
        let security = match s.tls {
            Tls::None => Security::None,
            Tls::StartTls => Security::StartTls(crate::imap::tls_config(s.ca_file.as_deref())?),
            Tls::Tls => Security::Tls(crate::imap::tls_config(s.ca_file.as_deref())?),
        };
        let credentials = match (&s.username, &s.password_file) {
            (Some(user), Some(file)) => {
                let password = std::fs::read_to_string(file).map_err(|e| {
                    anyhow::anyhow!("mail.outbound.password_file {}: {e}", file.display())
                })?;
                Some(crate::smtp::Credentials {
                    username: user.clone(),
                    password: password.trim_end_matches(['\r', '\n']).to_string(),
                })
            }
            (Some(_), None) => {
                return Err(anyhow::anyhow!(
                    "mail.outbound.password_file is required with mail.outbound.username"
                ))
            }
            _ => None,
        };
        Ok(SmtpPool {
            server: crate::smtp::Server {
                host: s.host.clone(),
                port: s.port,
                security,
                hello: hostname_or_default(),
                credentials,
            },
            idle: std::sync::Mutex::new(Vec::new()),
            max_idle: concurrency,
            hold_off: std::sync::Mutex::new(HoldOff::default()),
        })
    }

    /// An idle connection young enough to trust (`true`: it was reused), else a new one.
    async fn checkout(&self) -> Result<(crate::smtp::Connection, bool), SendError> {
        loop {
            let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match pooled {
                Some(c) if c.is_reusable() && c.idle_for() < MAX_IDLE => return Ok((c, true)),
                // too old to trust: closed politely in the background
                Some(c) => drop(tokio::spawn(c.quit())),
                None => return Ok((self.connect().await?, false)),
            }
        }
    }

    /// A new connection, unless the pool is holding off after a transport failure.
    async fn connect(&self) -> Result<crate::smtp::Connection, SendError> {
        {
            let h = self.hold_off.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            if let Some(until) = h.until.filter(|u| *u > now) {
                return Err(SendError::Transport(format!(
                    "not connecting for another {} s after: {}",
                    until.saturating_duration_since(now).as_secs() + 1,
                    h.cause
                )));
            }
        }
        match crate::smtp::Connection::open(&self.server).await {
            Ok(c) => {
                let mut h = self.hold_off.lock().unwrap_or_else(|p| p.into_inner());
                h.failures = 0;
                h.until = None;
                Ok(c)
            }
            Err(e) => {
                let mut h = self.hold_off.lock().unwrap_or_else(|p| p.into_inner());
                let now = std::time::Instant::now();
                if h.until.is_none_or(|u| u <= now) {
                    h.failures += 1;
                    h.until = Some(now + HoldOff::delay(h.failures));
                }
                h.cause = e.to_string();
                Err(SendError::Transport(e.to_string()))
            }
        }
    }

    pub async fn send(&self, envelope: &Envelope, bytes: &[u8]) -> Result<(), SendError> {
        let from = envelope.from().map(|a| a.to_string()).unwrap_or_default();
        let to: Vec<String> = envelope.to().iter().map(|a| a.to_string()).collect();
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        let payload = crate::smtp::proto::data_payload(bytes);
        let eight_bit = !bytes.is_ascii();
        let (mut conn, mut reused) = self.checkout().await?;
        loop {
            let res = conn
                .send(&from, &to, &payload, bytes.len(), eight_bit)
                .await;
            match res {
                Ok(()) => {
                    self.checkin(conn);
                    return Ok(());
                }
                // A pooled connection the server closed while it sat idle fails before any
                // reply to MAIL; nothing of this message was taken, so once more on a new one.
                Err(e)
                    if reused
                        && e.stage == crate::smtp::Stage::Mail
                        && matches!(e.failure, crate::smtp::Failure::Io(_)) =>
                {
                    conn = self.connect().await?;
                    reused = false;
                }
                Err(e) => {
                    if conn.is_reusable() {
                        self.checkin(conn);
                    }
                    return Err(classify(&e));
                }
            }
        }
    }

    fn checkin(&self, conn: crate::smtp::Connection) {
        if !conn.is_reusable() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// QUIT on every idle connection (at shutdown), within a second.
    pub async fn close(&self) {
        let idle: Vec<_> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        let quits = futures_util::future::join_all(idle.into_iter().map(|c| c.quit()));
        let _ = tokio::time::timeout(Duration::from_secs(1), quits).await;
    }
}

/// What a failed SMTP step means for the message: the transport's problem (it stays queued and
/// is never made undeliverable), a permanent refusal of it (5xx to its MAIL, RCPT or DATA), or a
/// transient one (4xx, or the connection lost during its transaction).
fn classify(e: &crate::smtp::Error) -> SendError {
    if e.is_transport() {
        SendError::Transport(e.to_string())
    } else if e.is_permanent() {
        SendError::Permanent(e.to_string())
    } else {
        SendError::Transient(e.to_string())
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
    transport.close().await;
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
    };
    let msg = sender
        .build(item)
        .map_err(|e| SendError::Permanent(e.to_string()))?;
    // VERP: the envelope sender is this message's own reply address, so a bounce comes back to
    // the plus address that names it.
    let env = sender
        .reply_address(&item.id)
        .ok()
        .zip(lettre::Address::new(item.to.local(), item.to.domain()).ok())
        .and_then(|(from, to)| Envelope::new(Some(from), vec![to]).ok())
        .ok_or_else(|| SendError::Permanent("cannot build the envelope".into()))?;
    transport.send(env, &item.message_id, msg.formatted()).await
}
