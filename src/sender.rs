//! The sender task: drains the outbox through one transport (file or pooled SMTP), marks what
//! was sent, retries transient failures with backoff and jitter, and dead-letters the rest.
//! No email leaves the daemon except from here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls as LettreTls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
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
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

impl Transport {
    pub fn from_config(outbound: &Outbound, concurrency: usize) -> anyhow::Result<Transport> {
        Ok(match outbound {
            Outbound::File { dir } => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow::anyhow!("mail.outbound.dir {}: {e}", dir.display()))?;
                Transport::File { dir: dir.clone() }
            }
            Outbound::Smtp(s) => Transport::Smtp(smtp_transport(s, concurrency)?),
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
            Transport::Smtp(t) => match t.send_raw(&envelope, &bytes).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => Err(SendError::Permanent(e.to_string())),
                Err(e) => Err(SendError::Transient(e.to_string())),
            },
        }
    }
}

fn smtp_transport(
    s: &SmtpConfig,
    concurrency: usize,
) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let tls_params = || -> anyhow::Result<TlsParameters> {
        let mut b = TlsParameters::builder(s.host.clone());
        if let Some(ca) = &s.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("mail.outbound.ca_file {}: {e}", ca.display()))?;
            let cert = lettre::transport::smtp::client::Certificate::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("mail.outbound.ca_file {}: {e}", ca.display()))?;
            b = b.add_root_certificate(cert);
        }
        Ok(b.build_rustls()?)
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
        .port(s.port)
        .timeout(Some(Duration::from_secs(30)))
        .pool_config(PoolConfig::new().max_size(concurrency as u32));
    b = match s.tls {
        Tls::None => b.tls(LettreTls::None),
        Tls::StartTls => b.tls(LettreTls::Required(tls_params()?)),
        Tls::Tls => b.tls(LettreTls::Wrapper(tls_params()?)),
    };
    if let (Some(user), Some(file)) = (&s.username, &s.password_file) {
        let password = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("mail.outbound.password_file {}: {e}", file.display()))?;
        b = b.credentials(Credentials::new(
            user.clone(),
            password.trim_end_matches(['\r', '\n']).to_string(),
        ));
    }
    Ok(b.build())
}

/// Writes `<name>.eml` atomically (temp file, fsync, rename): a re-send after a crash overwrites
/// the same file, so the outbox directory never holds a duplicate or a half-written message.
fn write_eml(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<(), SendError> {
    use std::io::Write;
    let io = |e: std::io::Error| SendError::Transient(format!("writing to {}: {e}", dir.display()));
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
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
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let now = Utc::now();
        let due = match app.store.read().outbox_due(&now, 512) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox");
                Vec::new()
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
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        // In-flight sends finish even when shutdown starts; what is not sent stays queued.
        let results = send_batch(&app, &transport, due, concurrency, pacing.as_mut()).await;
        if let Err(e) = app.record_sends(results, Utc::now()).await {
            tracing::error!(error = %e, "recording send results");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn send_batch(
    app: &Arc<App>,
    transport: &Arc<Transport>,
    due: Vec<OutboxItem>,
    concurrency: usize,
    mut pacing: Option<&mut tokio::time::Interval>,
) -> Vec<(OutboxItem, Result<(), SendError>)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for item in due {
        if let Some(p) = pacing.as_mut() {
            p.tick().await;
        }
        let sh = app.shared();
        let transport = transport.clone();
        let sem = sem.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let sender = Sender {
                from_name: &sh.cfg.from_name,
                from: &sh.cfg.from,
                reply_to: &sh.cfg.reply_to,
                public_url: &sh.cfg.public_url,
                keys: &sh.keys,
                templates: &sh.templates,
            };
            let res = match sender.build(&item) {
                Ok(msg) => {
                    // VERP: the envelope sender is this message's own reply address, so a
                    // bounce comes back to the plus address that names it.
                    let env = sender
                        .reply_address(&item.id)
                        .ok()
                        .zip(lettre::Address::new(item.to.local(), item.to.domain()).ok())
                        .and_then(|(from, to)| Envelope::new(Some(from), vec![to]).ok());
                    match env {
                        Some(env) => transport.send(env, &item.message_id, msg.formatted()).await,
                        None => Err(SendError::Permanent("cannot build the envelope".into())),
                    }
                }
                Err(e) => Err(SendError::Permanent(e.to_string())),
            };
            (item, res)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(x) => out.push(x),
            Err(e) => tracing::error!(error = %e, "send task failed"),
        }
    }
    out
}
