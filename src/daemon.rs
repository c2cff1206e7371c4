//! `invited serve`: opens the store, binds the listeners (sized to the open-files limit), starts
//! every task under one shutdown token, reloads on SIGHUP and drains on SIGTERM.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use chrono::Utc;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::{App, Shared};
use crate::config::{Config, Inbound};
use crate::listener::{self, Limits};
use crate::notify::Notifier;
use crate::store::{Store, StoreError};
use crate::templates::Templates;
use crate::token::Keys;

pub fn load_shared(cfg: Config) -> anyhow::Result<Shared> {
    cfg.check_credentials()?;
    if !cfg.store_backend.is_embedded() {
        // several daemons must sign and check links with the same keys: none makes its own
        for (kid, path) in &cfg.key_files {
            if !path.exists() {
                return Err(anyhow!(
                    "keys.files.{kid} {}: no such file; with store.backend = \"postgres\" every daemon must be given the same key files (invited generates a key only on the embedded default)",
                    path.display()
                ));
            }
        }
    }
    let keys = Keys::load(&cfg.key_active, &cfg.key_files)?;
    let templates = Templates::load(cfg.templates_dir.as_deref())?;
    // a key that does not load stops the start (or refuses the reload), naming the key
    let dkim = cfg
        .dkim
        .as_ref()
        .map(crate::dkim::Signer::load)
        .transpose()
        .map_err(|e| anyhow!("{}: `mail.dkim.key_file`: {e}", cfg.path.display()))?;
    Ok(Shared {
        cfg,
        keys,
        templates,
        dkim,
    })
}

async fn bind_admin_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(anyhow!(
                "another invited is already serving the admin socket {}",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding admin socket {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(l)
}

/// Reads the mailbox while this daemon holds the right to (`App::lead_mailbox`): with the
/// embedded store always; with several daemons on one PostgreSQL one of them at a time. One
/// reader is elected rather than several racing: two readers would each fetch and parse every
/// message, and their positions (UIDs seen, MOVE to the processed folder) would step on each
/// other; the outcome's unique key makes a race harmless, the election makes it rare. The holder
/// checks every few seconds that it still holds it; if its database session is gone it stops
/// reading and tries again, and when a daemon dies its session ends and another takes over.
async fn lead_inbound<F, Fut>(
    app: Arc<App>,
    mailbox: String,
    shutdown: CancellationToken,
    reader: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    const CHECK: std::time::Duration = std::time::Duration::from_secs(2);
    let mut said_waiting = false;
    while !shutdown.is_cancelled() {
        match app.lead_mailbox(&mailbox) {
            Ok(Some(mut leader)) => {
                if said_waiting {
                    tracing::info!(mailbox, "this daemon now reads the mailbox");
                }
                let stop = shutdown.child_token();
                let mut task = tokio::spawn(reader(stop.clone()));
                loop {
                    tokio::select! {
                        _ = &mut task => break,
                        _ = tokio::time::sleep(CHECK) => {
                            if !leader.holds() {
                                tracing::warn!(mailbox, "lost the mailbox lock (database session gone): stopping this reader");
                                stop.cancel();
                                let _ = (&mut task).await;
                                break;
                            }
                        }
                    }
                }
                drop(leader);
            }
            Ok(None) => {
                if !said_waiting {
                    tracing::info!(mailbox, "another daemon reads the mailbox; standing by");
                    said_waiting = true;
                }
            }
            Err(e) => {
                tracing::warn!(mailbox, error = %e, "cannot take the mailbox lock; trying again")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(CHECK) => {}
        }
    }
}

pub async fn serve(config_path: &Path) -> anyhow::Result<()> {
    let cfg = Config::load(config_path)?;
    let nofile = listener::raise_open_files_limit();
    let shared = load_shared(cfg.clone())?;
    // the store directory is private (a store made by an older version was 0755)
    if cfg.store_backend.is_embedded() {
        crate::private::create_dir(&cfg.store_path)
            .with_context(|| format!("store.path {}", cfg.store_path.display()))?;
    }
    let store = Store::open(&cfg).map_err(|e| match e {
        StoreError::Sled(_) => anyhow!(
            "opening the store at {}: {e} (is another invited running on it?)",
            cfg.store_path.display()
        ),
        other => anyhow!("opening the store at {}: {other}", cfg.store_path.display()),
    })?;
    match store.recover_claims() {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            items = n,
            "outbox items this daemon had claimed before it stopped are free again"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "freeing this daemon's earlier claims (they are free when their leases end)")
        }
    }
    let app = Arc::new(App::new(store, shared));
    let transport = Arc::new(crate::sender::Transport::from_config(
        &cfg.outbound,
        cfg.concurrency,
        cfg.max_messages_per_connection,
    )?);

    // every listener is bound before anything is served, so the status endpoint can name them all
    let http = listener::bind_tcp(cfg.http_listen)
        .with_context(|| format!("binding http.listen {}", cfg.http_listen))?;
    let http_addr = http.local_addr()?;
    let admin_sock = bind_admin_socket(&cfg.admin_socket).await?;
    let admin_tcp = match (cfg.admin_listen, &cfg.admin_token_file) {
        (Some(addr), Some(token_file)) => {
            let token = std::fs::read_to_string(token_file)
                .with_context(|| format!("admin.token_file {}", token_file.display()))?;
            let token = token.trim().to_string();
            if token.len() < 16 {
                return Err(anyhow!(
                    "admin.token_file {}: the token must be at least 16 characters",
                    token_file.display()
                ));
            }
            let l =
                listener::bind_tcp(addr).with_context(|| format!("binding admin.listen {addr}"))?;
            Some((l, token))
        }
        _ => None,
    };
    let metrics_tcp = match cfg.metrics_listen {
        Some(addr) => Some(
            listener::bind_tcp(addr)
                .with_context(|| format!("binding http.metrics_listen {addr}"))?,
        ),
        None => None,
    };
    let console_tcp = match &cfg.console {
        Some(c) => Some(
            listener::bind_tcp(c.listen)
                .with_context(|| format!("binding console.listen {}", c.listen))?,
        ),
        None => None,
    };
    let addr_of = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).ok();
    let console_addr = console_tcp.as_ref().and_then(addr_of);
    let admin_addr = admin_tcp.as_ref().and_then(|(l, _)| addr_of(l));
    let metrics_addr = metrics_tcp.as_ref().and_then(addr_of);

    // The public cap stays below the open-files limit: what the other listeners may hold, the
    // sender's SMTP connections and a fixed reserve for the store, inbound mail and the runtime
    // are kept back.
    let reserved = listener::RESERVED_FDS
        + cfg.concurrency as u64
        + listener::ADMIN_SOCKET_CONNECTIONS as u64
        + admin_tcp
            .as_ref()
            .map_or(0, |_| listener::ADMIN_TCP_CONNECTIONS as u64)
        + metrics_tcp
            .as_ref()
            .map_or(0, |_| listener::METRICS_CONNECTIONS as u64)
        + console_tcp
            .as_ref()
            .map_or(0, |_| listener::CONSOLE_CONNECTIONS as u64);
    let public_cap =
        listener::public_cap(cfg.max_connections, nofile, reserved).map_err(|m| anyhow!(m))?;
    if public_cap < cfg.max_connections {
        tracing::warn!(
            open_files_limit = nofile,
            reserved,
            max_connections = cfg.max_connections,
            effective = public_cap,
            "http.max_connections clamped below the open-files limit: serving at most {public_cap} public connections"
        );
    }
    tracing::info!(
        open_files_limit = nofile,
        public_connections = public_cap,
        header_timeout = ?cfg.header_timeout,
        idle_timeout = ?cfg.idle_timeout,
        "http limits"
    );

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    let admin_state = |token: Option<String>| {
        Arc::new(crate::admin::AdminState {
            app: app.clone(),
            http_addr: http_addr.to_string(),
            admin_addr: admin_addr.clone(),
            metrics_addr: metrics_addr.clone(),
            console_addr: console_addr.clone(),
            token,
        })
    };
    // The admin socket: long requests (a bulk invite chunk) are never cut, only idle or slow
    // clients are (see `listener`).
    tracker.spawn(listener::serve(
        admin_sock,
        crate::admin::router(admin_state(None)),
        Limits::from_config(&cfg, listener::ADMIN_SOCKET_CONNECTIONS),
        app.metrics.listener("admin_socket"),
        shutdown.clone(),
    ));
    if let Some((l, token)) = admin_tcp {
        tracker.spawn(listener::serve(
            l,
            crate::admin::router(admin_state(Some(token))),
            Limits::from_config(&cfg, listener::ADMIN_TCP_CONNECTIONS),
            app.metrics.listener("admin_tcp"),
            shutdown.clone(),
        ));
    }
    if let Some(l) = metrics_tcp {
        tracker.spawn(listener::serve(
            l,
            crate::admin::metrics_router(app.clone()),
            Limits::from_config(&cfg, listener::METRICS_CONNECTIONS),
            app.metrics.listener("metrics"),
            shutdown.clone(),
        ));
    }
    if let (Some(l), Some(c)) = (console_tcp, &cfg.console) {
        let state = Arc::new(crate::console::ConsoleState::new(app.clone(), c.clone()));
        tracker.spawn(listener::serve(
            l,
            crate::console::router(state),
            Limits::from_config(&cfg, listener::CONSOLE_CONNECTIONS),
            app.metrics.listener("console"),
            shutdown.clone(),
        ));
    }
    tracker.spawn(listener::serve(
        http,
        crate::http::router(app.clone()),
        Limits::from_config(&cfg, public_cap),
        app.metrics.listener("public"),
        shutdown.clone(),
    ));
    tracker.spawn(crate::sender::run(app.clone(), transport, shutdown.clone()));
    match &cfg.inbound {
        Inbound::Maildir { dir } => {
            crate::maildir::prepare(dir)
                .with_context(|| format!("mail.inbound.dir {}", dir.display()))?;
            let (app2, dir, poll) = (app.clone(), dir.clone(), cfg.poll_interval);
            tracker.spawn(lead_inbound(
                app.clone(),
                format!("maildir {}", dir.display()),
                shutdown.clone(),
                move |stop| crate::maildir::run(app2.clone(), dir.clone(), poll, stop),
            ));
        }
        Inbound::Imap(imap) => {
            let (app2, imap, poll) = (app.clone(), imap.clone(), cfg.poll_interval);
            tracker.spawn(lead_inbound(
                app.clone(),
                format!(
                    "imap {}@{}:{}/{}",
                    imap.username, imap.host, imap.port, imap.mailbox
                ),
                shutdown.clone(),
                move |stop| {
                    crate::imap::run(app2.clone(), imap.clone(), poll, imap.ca_file.clone(), stop)
                },
            ));
        }
    }
    {
        let app = app.clone();
        let sd = shutdown.clone();
        let interval = cfg.timer_interval;
        tracker.spawn(async move {
            loop {
                if let Err(e) = app.run_timers(Utc::now()).await {
                    tracing::error!(error = %e, "timers");
                }
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
        });
    }
    {
        // `[store] retention`: the store stays bounded
        let app = app.clone();
        let sd = shutdown.clone();
        tracker.spawn(async move {
            loop {
                if let Err(e) = app.prune(Utc::now()).await {
                    tracing::error!(error = %e, "pruning the store");
                }
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tokio::time::sleep(app.prune_interval()) => {}
                }
            }
        });
    }
    let notifier = Arc::new(Notifier::from_env());
    tracker.spawn(supervise(app.clone(), notifier.clone(), shutdown.clone()));
    tracker.close();
    // the store is open and every listener bound: systemd may send traffic now
    notifier.ready(&status_line(&app, ""));

    eprintln!(
        "invited {}: serving http://{http_addr} (links use {}), admin socket {}",
        env!("CARGO_PKG_VERSION"),
        cfg.public_url,
        cfg.admin_socket.display()
    );

    signals(&app, config_path, &notifier, &shutdown).await?;
    notifier.stopping();
    tracing::info!("shutting down: draining tasks");
    // Sends in flight get `sender::DRAIN_GRACE`; whatever still runs after STOP_DEADLINE is left
    // (its work stays queued in the store), so the stop fits systemd's TimeoutStopSec.
    if tokio::time::timeout(STOP_DEADLINE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("tasks still busy at the stop deadline; their work stays queued");
    }
    app.flush_store().await?;
    let _ = std::fs::remove_file(&cfg.admin_socket);
    tracing::info!("stopped");
    Ok(())
}

/// How long a stop waits for the tasks before flushing and exiting (DESIGN: exit within 10 s).
const STOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(8);

/// A work loop busy with one unit of work for this long is stuck: the watchdog is not fed.
const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// "serving; 12 queued, 0 dead" (+ a note), for systemd's STATUS.
fn status_line(app: &App, note: &str) -> String {
    let (queued, dead) = app.outbox_gauges();
    let note = if note.is_empty() {
        String::new()
    } else {
        format!("; {note}")
    };
    format!("serving; {queued} queued, {dead} dead{note}")
}

/// Feeds systemd's watchdog while the work loops are alive and keeps STATUS current.
async fn supervise(app: Arc<App>, notifier: Arc<Notifier>, shutdown: CancellationToken) {
    if !notifier.enabled() {
        return;
    }
    let watchdog = Notifier::watchdog_interval();
    let tick = watchdog
        .unwrap_or(std::time::Duration::from_secs(5))
        .min(std::time::Duration::from_secs(5));
    let mut reported_stuck = false;
    loop {
        match app.heartbeats.stuck(STUCK_AFTER) {
            None => {
                reported_stuck = false;
                if watchdog.is_some() {
                    notifier.watchdog();
                }
            }
            Some((task, busy)) => {
                if !reported_stuck {
                    tracing::error!(task, busy_secs = busy.as_secs(), "a work loop is stuck: no longer feeding the watchdog, systemd will restart the service");
                    reported_stuck = true;
                }
            }
        }
        notifier.status(&status_line(&app, ""));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

async fn signals(
    app: &App,
    config_path: &Path,
    notifier: &Notifier,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(app, config_path, notifier),
        }
    }
    shutdown.cancel();
    Ok(())
}

/// SIGHUP: a new config, providers, keys and templates, or — if any of it does not load — the
/// running ones kept and the reason (naming the key) logged and shown in STATUS.
fn reload(app: &App, config_path: &Path, notifier: &Notifier) {
    notifier.reloading();
    match Config::load(config_path)
        .map_err(anyhow::Error::from)
        .and_then(load_shared)
    {
        Ok(s) => {
            let restart = app.shared().cfg.restart_needed(&s.cfg);
            app.replace_shared(s);
            if restart.is_empty() {
                tracing::info!("configuration, providers, keys and templates reloaded");
                notifier.ready(&status_line(app, "reloaded"));
            } else {
                let keys = restart.join(", ");
                tracing::warn!(
                    restart_needed = %keys,
                    "configuration, providers, keys and templates reloaded; these changed settings keep their old values until a restart"
                );
                notifier.ready(&status_line(
                    app,
                    &format!("reloaded; restart to apply {keys}"),
                ));
            }
        }
        Err(e) => {
            let e = crate::text::escape_controls(&format!("{e:#}"));
            tracing::error!(error = %e, "reload refused; keeping the running configuration");
            notifier.ready(&status_line(
                app,
                &format!("reload refused ({e}); running configuration kept"),
            ));
        }
    }
}
